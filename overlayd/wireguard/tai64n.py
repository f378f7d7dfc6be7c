"""TAI64N timestamps for handshake initiations (whitepaper 5.4.2)."""

import math
import struct

# 2^62 marks TAI64 labels; the kernel and wireguard-go add 10 s (the TAI-UTC offset of 1972).
_TAI64_BASE = 0x400000000000000A
# Nanoseconds are rounded down to a power of two near 1/50 s so the timestamp does not
# leak a precise clock (same whitening as the kernel and wireguard-go).
_WHITENER = 1 << 24
_FORMAT = struct.Struct(">QI")


def tai64n(unix_time: float) -> bytes:
    """12-byte big-endian TAI64N label; byte order makes `>` on the bytes a time comparison."""
    seconds = math.floor(unix_time)
    nanos = min(int((unix_time - seconds) * 1e9), 999_999_999)
    return _FORMAT.pack(_TAI64_BASE + seconds, nanos - nanos % _WHITENER)
