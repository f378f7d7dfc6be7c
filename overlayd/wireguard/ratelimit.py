"""Per-source handshake rate limiting and under-load detection (whitepaper 5.3).

Like wireguard-go's ratelimiter: a token bucket per source (IPv4 address, or IPv6 /64 as the
kernel does) allowing 20 handshakes a second with a burst of 5; idle entries are forgotten.
"""

import ipaddress
from dataclasses import dataclass

from overlayd.wireguard.constants import (
    RATELIMIT_BURST,
    RATELIMIT_PACKETS_PER_SECOND,
    UNDER_LOAD_AFTER_TIME,
)

_GC_INTERVAL = 1.0


def source_key(host: str) -> bytes:
    """Bucket key: the IPv4 address, or the /64 of an IPv6 address (mapped v4 counts as v4)."""
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped.packed
        return addr.packed[:8]
    return addr.packed


class RateLimiter:
    __slots__ = ("_cost", "_max_tokens", "_buckets", "_last_gc")

    def __init__(self, per_second: float = RATELIMIT_PACKETS_PER_SECOND, burst: int = RATELIMIT_BURST) -> None:
        self._cost = 1.0 / per_second
        self._max_tokens = self._cost * burst
        self._buckets: dict[bytes, tuple[float, float]] = {}  # key -> (tokens, last time)
        self._last_gc = 0.0

    def allow(self, key: bytes, now: float) -> bool:
        if now - self._last_gc >= _GC_INTERVAL:
            self._collect(now)
        entry = self._buckets.get(key)
        if entry is None:
            self._buckets[key] = (self._max_tokens - self._cost, now)
            return True
        tokens, last = entry
        tokens = min(self._max_tokens, tokens + max(0.0, now - last))
        if tokens >= self._cost:
            self._buckets[key] = (tokens - self._cost, now)
            return True
        self._buckets[key] = (tokens, now)
        return False

    def _collect(self, now: float) -> None:
        self._last_gc = now
        stale = [k for k, (_, last) in self._buckets.items() if now - last > _GC_INTERVAL]
        for k in stale:
            del self._buckets[k]

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass
class LoadDetector:
    """"Under load" when more than `threshold` handshake messages with a valid mac1 arrive
    within one `window` (the device counts nothing else, so junk cannot switch it on).

    128 is wireguard-go's figure (it looks at a handshake queue of 1024 being 1/8 full); the
    state lasts UNDER_LOAD_AFTER_TIME after the last sign of load, as there.
    """

    threshold: int = 128
    window: float = 1.0
    _window_start: float = float("-inf")
    _count: int = 0
    _until: float = float("-inf")

    def observe_handshake(self, now: float) -> bool:
        """Count one handshake message; returns whether the device is under load."""
        if now - self._window_start >= self.window:
            self._window_start = now
            self._count = 0
        self._count += 1
        if self._count > self.threshold:
            self._until = now + UNDER_LOAD_AFTER_TIME
        return now < self._until
