"""Remote VTEPs and the screening that keeps bad peer data out of the kernel.

Peer data comes from etcd, written by other hosts: a peer whose subnet overlaps ours
or another peer's, or that claims our public IP or VTEP MAC, is refused (never
programmed), so one broken record cannot hijack or blackhole traffic meant for someone
else. When hosts share a VTEP MAC (a disk cloned with its host.json), the host whose
record is older in etcd (create revision) keeps it and the newcomers are refused:
refusing them all would cut the original host off from every peer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from overlayd.errors import ClusterError, ConfigError

from .mac import parse_mac_untrusted
from .objects import IPAddress, IPNetwork

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class PeerVtep:
    public_ip: IPAddress
    vtep_mac: str  # lower-case unicast MAC of the peer's VXLAN device
    create_revision: int = 0  # etcd create revision of the peer's key: its age (0: unknown)

    @classmethod
    def from_backend_data_untrusted(
        cls, public_ip: IPAddress, backend: Mapping[str, object], create_revision: int = 0
    ) -> PeerVtep:
        """Build from a host record's backend data (ClusterError if it is not VXLAN data)."""
        if backend.get("type") != "vxlan":
            raise ClusterError(f"host {public_ip}: backend type {backend.get('type')!r}, expected 'vxlan'")
        try:
            mac = parse_mac_untrusted(backend.get("vtep_mac"))
        except ConfigError as exc:
            raise ClusterError(f"host {public_ip}: bad vtep_mac: {exc}") from None
        return cls(public_ip=public_ip, vtep_mac=mac, create_revision=create_revision)


@dataclass(frozen=True)
class Refusal:
    subnet: IPNetwork
    reason: str


@dataclass(frozen=True)
class Screened:
    accepted: Mapping[IPNetwork, PeerVtep]
    refused: tuple[Refusal, ...]


def screen_peers(
    peers: Mapping[IPNetwork, PeerVtep],
    *,
    own_subnet: IPNetwork,
    own_ip: IPAddress,
    own_mac: str,
) -> Screened:
    """Split `peers` into the ones safe to program and the refused ones (with reasons)."""
    refused: dict[IPNetwork, str] = {}
    for subnet, peer in peers.items():
        reason = _own_conflict(subnet, peer, own_subnet, own_ip, own_mac)
        if reason:
            refused[subnet] = reason

    candidates = sorted((s for s in peers if s not in refused), key=lambda s: (int(s.network_address), s.prefixlen))
    # Sorted by start address, a subnet overlaps an earlier one iff it starts before the
    # furthest end seen so far; every member of such a chain is refused. (All candidates
    # have our IP version, so comparing addresses as integers is sound.)
    furthest: IPNetwork | None = None
    for subnet in candidates:
        if furthest is not None and int(subnet.network_address) <= int(furthest.broadcast_address):
            refused[subnet] = f"subnet overlaps peer subnet {furthest}"
            refused.setdefault(furthest, f"subnet overlaps peer subnet {subnet}")
        if furthest is None or int(subnet.broadcast_address) > int(furthest.broadcast_address):
            furthest = subnet

    # A host's claim on its MAC is as old as its oldest record (one host may hold several subnets).
    hosts_by_mac: dict[str, dict[IPAddress, int]] = defaultdict(dict)
    for subnet in candidates:
        if subnet not in refused:
            peer = peers[subnet]
            hosts = hosts_by_mac[peer.vtep_mac]
            hosts[peer.public_ip] = min(hosts.get(peer.public_ip, peer.create_revision), peer.create_revision)
    for subnet in candidates:
        peer = peers[subnet]
        hosts = hosts_by_mac[peer.vtep_mac]
        if subnet not in refused and len(hosts) > 1:
            elder = oldest_claimant(hosts)
            if elder is None:
                refused[subnet] = f"VTEP MAC {peer.vtep_mac} is claimed by several hosts, none with an older record"
            elif peer.public_ip != elder:
                refused[subnet] = (f"VTEP MAC {peer.vtep_mac} belongs to host {elder}, whose record is older"
                                   " (a cloned host?)")

    return Screened(
        accepted={s: p for s, p in peers.items() if s not in refused},
        refused=tuple(Refusal(s, refused[s]) for s in sorted(refused, key=lambda s: (s.version, s))),
    )


def oldest_claimant(claims: Mapping[K, int]) -> K | None:
    """The claimant with the oldest record (lowest etcd create revision); None on a tie,
    which only records of unknown age (revision 0, from saved state) can produce."""
    oldest = min(claims.values())
    elders = [claimant for claimant, revision in claims.items() if revision == oldest]
    return elders[0] if len(elders) == 1 else None


def _own_conflict(
    subnet: IPNetwork, peer: PeerVtep, own_subnet: IPNetwork, own_ip: IPAddress, own_mac: str
) -> str | None:
    if subnet.version != own_subnet.version:
        return f"subnet is IPv{subnet.version}, ours is IPv{own_subnet.version}"
    if peer.public_ip.version != own_ip.version:
        return f"public IP {peer.public_ip} is not IPv{own_ip.version} like our underlay"
    if subnet.overlaps(own_subnet):
        return f"subnet overlaps our own subnet {own_subnet}"
    if peer.public_ip == own_ip:
        return f"public IP {peer.public_ip} is our own"
    if peer.vtep_mac == own_mac:
        return f"VTEP MAC {peer.vtep_mac} is our own"
    return None
