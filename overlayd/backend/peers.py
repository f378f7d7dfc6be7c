"""The screening every backend applies to its peers, and the VXLAN peer (PeerVtep).

Peer data comes from etcd, written by other hosts: a peer whose subnet overlaps ours
or another peer's, or that claims our public IP or our identity (VTEP MAC, WireGuard
key, ...), is refused (never programmed), so one broken record cannot hijack or
blackhole traffic meant for someone else. When hosts share an identity (a disk cloned
with its state), the host whose record is older in etcd (create revision) keeps it and
the newcomers are refused: refusing them all would cut the original host off from every
peer. The rules are the same for every backend; only what "identity" means differs.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from overlayd.cluster.errors import RecordError
from overlayd.errors import ConfigError

from .contract import BACKEND_MISMATCH, BackendPeer, Refusal
from .mac import parse_mac_untrusted
from .objects import IPAddress, IPNetwork

K = TypeVar("K", bound=Hashable)
P = TypeVar("P", bound=BackendPeer)


@dataclass(frozen=True)
class PeerVtep:
    public_ip: IPAddress
    vtep_mac: str  # lower-case unicast MAC of the peer's VXLAN device
    create_revision: int = 0  # etcd create revision of the peer's key: its age (0: unknown)

    @property
    def identity(self) -> str:
        return self.vtep_mac

    @classmethod
    def from_backend_data_untrusted(
        cls, public_ip: IPAddress, backend: Mapping[str, object], create_revision: int = 0
    ) -> PeerVtep:
        """Build from a host record's backend data (RecordError if it is not VXLAN data)."""
        if backend.get("type") != "vxlan":
            raise mismatch(public_ip, f"backend type {backend.get('type')!r}, expected 'vxlan'")
        try:
            mac = parse_mac_untrusted(backend.get("vtep_mac"))
        except ConfigError as exc:
            raise mismatch(public_ip, f"bad vtep_mac: {exc}") from None
        return cls(public_ip=public_ip, vtep_mac=mac, create_revision=create_revision)


def mismatch(public_ip: IPAddress, why: str) -> RecordError:
    """A record this backend cannot program: counted as backend_mismatch."""
    return RecordError(f"host {public_ip}: {why}", reason=BACKEND_MISMATCH)


@dataclass(frozen=True)
class Screened(Generic[P]):
    accepted: Mapping[IPNetwork, P]
    refused: tuple[Refusal, ...]


def screen_peers(
    peers: Mapping[IPNetwork, P],
    *,
    own_subnet: IPNetwork,
    own_ip: IPAddress,
    own_identity: Hashable,
    identity_name: str = "VTEP MAC",
) -> Screened[P]:
    """Split `peers` into the ones safe to program and the refused ones (with reasons).
    identity_name says what a peer's `identity` is, for the reasons.

    Works on positions in one list rather than on dicts keyed by network: hashing an
    ip_network is slow, and this runs on every peer event among thousands of peers."""
    entries = list(peers.items())
    own_range = (int(own_subnet.network_address), int(own_subnet.broadcast_address))
    refused: dict[int, str] = {}
    for i, (subnet, peer) in enumerate(entries):
        reason = _own_conflict(subnet, peer, own_subnet, own_range, own_ip, own_identity, identity_name)
        if reason:
            refused[i] = reason
    starts = [int(subnet.network_address) for subnet, _ in entries]
    ends = [int(subnet.broadcast_address) for subnet, _ in entries]

    candidates = sorted((i for i in range(len(entries)) if i not in refused),
                        key=lambda i: (starts[i], entries[i][0].prefixlen))
    # Sorted by start address, a subnet overlaps an earlier one iff it starts before the
    # furthest end seen so far; every member of such a chain is refused. (All candidates
    # have our IP version, so comparing addresses as integers is sound.)
    furthest: int | None = None
    for i in candidates:
        if furthest is not None and starts[i] <= ends[furthest]:
            refused[i] = f"subnet overlaps peer subnet {entries[furthest][0]}"
            refused.setdefault(furthest, f"subnet overlaps peer subnet {entries[i][0]}")
        if furthest is None or ends[i] > ends[furthest]:
            furthest = i

    # A host's claim on its identity is as old as its oldest record (one host may hold several subnets).
    hosts_by_identity: dict[Hashable, dict[IPAddress, int]] = defaultdict(dict)
    for i in candidates:
        if i not in refused:
            peer = entries[i][1]
            hosts = hosts_by_identity[peer.identity]
            hosts[peer.public_ip] = min(hosts.get(peer.public_ip, peer.create_revision), peer.create_revision)
    for i in candidates:
        peer = entries[i][1]
        hosts = hosts_by_identity[peer.identity]
        if i not in refused and len(hosts) > 1:
            elder = oldest_claimant(hosts)
            shown = _shown(peer.identity)
            if elder is None:
                refused[i] = f"{identity_name} {shown} is claimed by several hosts, none with an older record"
            elif peer.public_ip != elder:
                refused[i] = (f"{identity_name} {shown} belongs to host {elder}, whose record is older"
                              " (a cloned host?)")

    accepted = dict(peers)  # a copy keeps the keys' hashes: hashing thousands of networks again is slow
    for i in refused:
        del accepted[entries[i][0]]
    return Screened(
        accepted=accepted,
        refused=tuple(sorted((Refusal(entries[i][0], reason) for i, reason in refused.items()),
                             key=lambda r: (r.subnet.version, r.subnet))),
    )


def oldest_claimant(claims: Mapping[K, int]) -> K | None:
    """The claimant with the oldest record (lowest etcd create revision); None on a tie,
    which only records of unknown age (revision 0, from saved state) can produce."""
    oldest = min(claims.values())
    elders = [claimant for claimant, revision in claims.items() if revision == oldest]
    return elders[0] if len(elders) == 1 else None


def _shown(identity: Hashable) -> str:
    return base64.b64encode(identity).decode() if isinstance(identity, bytes) else str(identity)


def _own_conflict(subnet: IPNetwork, peer: BackendPeer, own_subnet: IPNetwork, own_range: tuple[int, int],
                  own_ip: IPAddress, own_identity: Hashable, identity_name: str) -> str | None:
    if subnet.version != own_subnet.version:
        return f"subnet is IPv{subnet.version}, ours is IPv{own_subnet.version}"
    if peer.public_ip.version != own_ip.version:
        return f"public IP {peer.public_ip} is not IPv{own_ip.version} like our underlay"
    if int(subnet.network_address) <= own_range[1] and own_range[0] <= int(subnet.broadcast_address):
        return f"subnet overlaps our own subnet {own_subnet}"
    if peer.public_ip == own_ip:
        return f"public IP {peer.public_ip} is our own"
    if peer.identity == own_identity:
        return f"{identity_name} {_shown(peer.identity)} is our own"
    return None
