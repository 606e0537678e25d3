"""The wire: typed messages in and out, close codes, reject reasons; websocket framing."""
