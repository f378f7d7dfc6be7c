"""Choosing the subnet a host leases out of the cluster network.

The work is done on integer ranges of candidate indexes, never on a list of candidates, so the
cost grows with the number of taken and cooling entries and not with the size of the space
(10.0.0.0/8 holds 65,536 /24s; an IPv6 /32 holds 2**32 /64s). The pick among free subnets is
exactly uniform: no probing that degrades when the space is nearly full.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from ipam.config import ClusterConfig, IPNetwork
from ipam.errors import OutOfSubnets

IndexRange = tuple[int, int]  # inclusive first and last candidate index


@dataclass(frozen=True)
class _Grid:
    """The network cut into equal subnets of subnet_len, numbered from 0."""

    network: IPNetwork
    subnet_len: int

    @property
    def count(self) -> int:
        return 1 << (self.subnet_len - self.network.prefixlen)

    @property
    def _size(self) -> int:
        return 1 << (self.network.max_prefixlen - self.subnet_len)

    def overlapping(self, net: IPNetwork) -> IndexRange | None:
        """Indexes of the candidates net overlaps, whatever its length; None if it misses them all."""
        if not isinstance(net, (IPv4Network, IPv6Network)):
            raise TypeError(f"expected an IPv4Network or IPv6Network, got {net!r}")
        if net.version != self.network.version:
            return None
        base = int(self.network.network_address)
        low = max(int(net.network_address), base)
        high = min(int(net.broadcast_address), int(self.network.broadcast_address))
        if low > high:
            return None
        return (low - base) // self._size, (high - base) // self._size

    def subnet(self, index: int) -> IPNetwork:
        address = int(self.network.network_address) + index * self._size
        return type(self.network)((address, self.subnet_len))


def _free_ranges(count: int, blocked: Iterable[IndexRange]) -> list[IndexRange]:
    """The index ranges in 0..count-1 that no blocked range touches."""
    free = []
    next_free = 0
    for low, high in sorted(blocked):  # sorted: the result must not depend on the caller's set order
        if low > next_free:
            free.append((next_free, low - 1))
        next_free = max(next_free, high + 1)
    if next_free < count:
        free.append((next_free, count - 1))
    return free


def _pick_uniform(free: list[IndexRange], rng: random.Random) -> int:
    position = rng.randrange(sum(high - low + 1 for low, high in free))
    for low, high in free[:-1]:
        if position <= high - low:
            return low + position
        position -= high - low + 1
    return free[-1][0] + position


def _resolve_space(space: ClusterConfig | IPNetwork, subnet_len: int | None) -> _Grid:
    if isinstance(space, ClusterConfig):
        if subnet_len is not None and subnet_len != space.subnet_len:
            raise ValueError(f"subnet_len /{subnet_len} contradicts the config's /{space.subnet_len}")
        return _Grid(space.network, space.subnet_len)  # type: ignore[arg-type]  # resolved by the config
    if not isinstance(space, (IPv4Network, IPv6Network)):
        raise TypeError(f"expected a ClusterConfig or a network, got {space!r}")
    if subnet_len is None or not space.prefixlen <= subnet_len <= space.max_prefixlen:
        raise ValueError(
            f"subnet_len must be in {space.prefixlen}..{space.max_prefixlen} for {space}, got {subnet_len}"
        )
    return _Grid(space, subnet_len)


def choose_subnet(
    space: ClusterConfig | IPNetwork,
    subnet_len: int | None = None,
    taken: Collection[IPNetwork] = (),
    *,
    previous: IPNetwork | None = None,
    cooling: Collection[IPNetwork] = (),
    rng: random.Random,
) -> IPNetwork:
    """Pick a free subnet of subnet_len (default: the config's) inside space.

    taken: subnets leased by live hosts. Entries of any length or family are accepted; a candidate
        is taken when any entry overlaps it, so a stray /23 blocks two /24s and a /25 blocks one.
        If the caller still holds a lease on previous, it must leave it out of taken.
    previous: the subnet this host held before; it is returned whenever it is a valid candidate and
        not taken, even while cooling (it cooled because it was ours).
    cooling: subnets released or expired recently; handed out only when nothing else is free, so
        stale routes on other hosts have time to go away.
    rng: the randomness, injected so that tests are reproducible.

    Raises OutOfSubnets (with the total number of candidates) when every candidate is taken.
    """
    grid = _resolve_space(space, subnet_len)
    blocked_by_taken = [r for r in map(grid.overlapping, taken) if r is not None]
    if previous is not None and previous.prefixlen == grid.subnet_len:
        index = grid.overlapping(previous)
        if index is not None and not any(low <= index[0] <= high for low, high in blocked_by_taken):
            return previous
    blocked_by_cooling = [r for r in map(grid.overlapping, cooling) if r is not None]
    for blocked in (blocked_by_taken + blocked_by_cooling, blocked_by_taken):
        free = _free_ranges(grid.count, blocked)
        if free:
            return grid.subnet(_pick_uniform(free, rng))
    raise OutOfSubnets(grid.network, grid.subnet_len, grid.count)
