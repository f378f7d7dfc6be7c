"""Structure from fuzz bytes: a harness reads choices and lengths off the front of its input.

Reading past the end yields zeros, so every input, however short, means something.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size).ljust(size, b"\0"), "big")

    def take(self, size: int) -> bytes:
        chunk = self.data[self.pos : self.pos + size]
        self.pos += len(chunk)
        return chunk

    def choice(self, options: Sequence[T]) -> T:
        return options[self.byte() % len(options)]

    def chunk(self) -> bytes:
        """A length-prefixed piece (one length byte)."""
        return self.take(self.byte())

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    def mutate(self, original: bytes) -> bytes:
        """original with edits read off the input: 3 bytes each (kind, position, value), at most 8."""
        data = bytearray(original)
        for _ in range(min(8, (len(self.data) - self.pos) // 3)):
            kind, position, value = self.byte(), self.byte(), self.byte()
            # Positions reach the whole message: scaled from one byte, plus an exact low part.
            at = (position * len(data)) // 256 + (kind >> 3) % 8 if data else 0
            op = kind % 6
            if op == 0 and data:
                data[at % len(data)] ^= 1 << (value % 8)
            elif op == 1 and data:
                data[at % len(data)] = value
            elif op == 2:
                data[at:at] = bytes([value])
            elif op == 3 and data:
                del data[at % len(data) : at % len(data) + 1 + value % 4]
            elif op == 4:
                del data[at:]
            else:
                data[at:at] = data[at : at + 1 + value % 32]
        return bytes(data)
