"""gifting.wire.framing: the server's websocket frames, byte for byte as the websockets library builds them."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from gifting.wire import framing
from gifting.wire.protocol import Codec

# Websocket frames -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("codec", [Codec.JSON, Codec.MSGPACK])
def test_ws_frame_is_what_websockets_serializes_at_every_length_boundary(size: int, codec: Codec) -> None:
    """ws_frame equals websockets' own unmasked serialization (7-, 16- and 64-bit lengths; text or binary)."""
    data: str | bytes = "é" * (size // 2) + "x" * (size % 2) if codec is Codec.JSON else b"\x00" * size
    payload = data.encode() if isinstance(data, str) else data
    opcode = Opcode.TEXT if codec is Codec.JSON else Opcode.BINARY
    expected = Frame(opcode, payload).serialize(mask=False, extensions=[])
    framed = framing.ws_frame(data)
    assert framed == expected
    assert framed[1] == (len(payload) if len(payload) < 126 else 126 if len(payload) < 65536 else 127)
