"""DNS over TCP: each message behind a 2-byte big-endian length (RFC 1035 4.2.2, RFC 7766)."""

from __future__ import annotations

import struct

import trio

_LENGTH = struct.Struct("!H")


class FrameTooLarge(Exception):
    """The peer announced a message longer than we accept."""


def frame(message: bytes) -> bytes:
    return _LENGTH.pack(len(message)) + message


class FrameReader:
    """Reads length-prefixed messages from a stream, any number of them pipelined."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def receive_untrusted(self, max_size: int) -> bytes | None:
        """The next message; None at a clean end of stream (EOF between messages).

        Raises FrameTooLarge for a length over max_size, trio.BrokenResourceError for an
        EOF inside a message."""
        if not await self._fill(_LENGTH.size):
            return None
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length > max_size:
            raise FrameTooLarge(length)
        if not await self._fill(_LENGTH.size + length):
            raise trio.BrokenResourceError("stream ended inside a DNS message")
        message = bytes(self._buffer[_LENGTH.size:_LENGTH.size + length])
        del self._buffer[:_LENGTH.size + length]
        return message

    async def _fill(self, size: int) -> bool:
        """Read until the buffer holds `size` bytes; False on EOF with the buffer empty."""
        while len(self._buffer) < size:
            data = await self._stream.receive_some(max(size - len(self._buffer), 4096))
            if not data:
                if self._buffer:
                    raise trio.BrokenResourceError("stream ended inside a DNS message")
                return False
            self._buffer += data
        return True
