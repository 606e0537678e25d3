"""The live room: room state, the hub (sockets, pub/sub, ticks), the websocket endpoint."""
