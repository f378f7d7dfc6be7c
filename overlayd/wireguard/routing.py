"""Cryptokey routing table: allowed IPs with longest-prefix match (whitepaper 3).

One hash table per prefix length, probed from the longest length present: a lookup costs as
many dict probes as there are distinct prefix lengths (few in practice), not 32 or 128 steps.
Each prefix belongs to one owner; inserting it for another owner moves it. Recent answers
are cached per address (a dict probe instead of the scan); any change clears the cache.
"""

import ipaddress
from typing import Generic, TypeVar

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
V = TypeVar("V")
_CACHE_LIMIT = 4096


class _Family(Generic[V]):
    __slots__ = ("bits", "tables", "lengths")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.tables: dict[int, dict[int, V]] = {}
        self.lengths: list[int] = []  # descending

    def insert(self, prefix: int, length: int, value: V) -> V | None:
        table = self.tables.get(length)
        if table is None:
            table = self.tables[length] = {}
            self.lengths = sorted(self.tables, reverse=True)
        old = table.get(prefix)
        table[prefix] = value
        return old

    def remove(self, prefix: int, length: int) -> None:
        table = self.tables.get(length)
        if table is not None and table.pop(prefix, None) is not None and not table:
            del self.tables[length]
            self.lengths = sorted(self.tables, reverse=True)

    def lookup(self, address: int) -> V | None:
        bits = self.bits
        tables = self.tables
        for length in self.lengths:
            value = tables[length].get(address >> (bits - length))
            if value is not None:
                return value
        return None


class AllowedIPs(Generic[V]):
    def __init__(self) -> None:
        self._v4: _Family[V] = _Family(32)
        self._v6: _Family[V] = _Family(128)
        self._by_owner: dict[V, set[Network]] = {}
        self._cache: dict[bytes, V | None] = {}

    def _family(self, network: Network) -> _Family[V]:
        return self._v4 if network.version == 4 else self._v6

    @staticmethod
    def _key(network: Network) -> tuple[int, int]:
        return int(network.network_address) >> (network.max_prefixlen - network.prefixlen), network.prefixlen

    def insert(self, network: Network | str, owner: V) -> V | None:
        """Give `network` to `owner`; returns the owner it was taken from, if another."""
        net = network if isinstance(network, Network) else ipaddress.ip_network(network, strict=False)
        self._cache.clear()
        prefix, length = self._key(net)
        old = self._family(net).insert(prefix, length, owner)
        self._by_owner.setdefault(owner, set()).add(net)
        if old is not None and old != owner:
            self._by_owner[old].discard(net)
            return old
        return None

    def remove_owner(self, owner: V) -> None:
        self._cache.clear()
        for net in self._by_owner.pop(owner, ()):
            self._family(net).remove(*self._key(net))

    def networks_of(self, owner: V) -> list[Network]:
        return sorted(self._by_owner.get(owner, ()), key=lambda n: (n.version, n.network_address, n.prefixlen))

    def lookup(self, address: bytes) -> V | None:
        """Owner of the longest prefix containing a packed 4- or 16-byte address."""
        cache = self._cache
        try:
            return cache[address]
        except KeyError:
            pass
        family = self._v4 if len(address) == 4 else self._v6
        owner = family.lookup(int.from_bytes(address, "big"))
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[address] = owner
        return owner
