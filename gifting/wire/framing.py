"""RFC 6455 framing of the server's frames, apart from the message schema: the hub builds each frame once and
writes the same bytes to every connection (gifting/live/direct.py). Pure.
"""

from __future__ import annotations

import struct

# RFC 6455 5.2: FIN bit, opcodes, and where the 7-bit length gives way to a 16-bit and a 64-bit one.
_FIN = 0x80
_OP_TEXT, _OP_BINARY = 0x1, 0x2
_LEN_16, _LEN_64 = 126, 127


def ws_frame(data: str | bytes) -> bytes:
    """What `encode` returned, as one complete websocket frame: text for str (JSON), binary for bytes (msgpack).

    FIN set, no extension bits, unmasked (a server's frames never are), length in 7, 16 or 64 bits. The hub
    builds it once per tick, audience and codec, and writes the same bytes to every connection. Valid only on a
    connection without extensions (permessage-deflate is off; gifting/live/direct.py checks it per connection).
    """
    if isinstance(data, str):
        return frame_bytes(_OP_TEXT, data.encode())
    return frame_bytes(_OP_BINARY, data)


def frame_bytes(opcode: int, payload: bytes) -> bytes:
    """One unmasked websocket frame with FIN set (RFC 6455 5.2): `opcode`, then `payload` as it is."""
    first = _FIN | opcode
    n = len(payload)
    if n < _LEN_16:
        header = struct.pack("!BB", first, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, _LEN_16, n)
    else:
        header = struct.pack("!BBQ", first, _LEN_64, n)
    return header + payload
