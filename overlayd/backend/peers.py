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
import bisect
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


class ScreenCache(Generic[P]):
    """screen_peers for a peer set that changes a little at a time (one watch event among
    thousands of peers): while the last result refused nobody, the set is free of conflicts,
    and a change that brings none keeps it so. Such changes cost their own size; anything
    else (a refusal before or now, a big change) is screened in full."""

    MAX_CHANGES = 64  # beyond this a full screening is as cheap

    def __init__(self, *, own_subnet: IPNetwork, own_ip: IPAddress, own_identity: Hashable,
                 identity_name: str = "VTEP MAC") -> None:
        self._own = dict(own_subnet=own_subnet, own_ip=own_ip, own_identity=own_identity, identity_name=identity_name)
        self._own_range = (int(own_subnet.network_address), int(own_subnet.broadcast_address))
        self._input: dict[IPNetwork, P] | None = None  # what was screened last, when nothing was refused
        self._accepted: dict[IPNetwork, P] = {}
        self._starts: list[int] = []  # of the accepted subnets, sorted; with their ends
        self._ends: list[int] = []
        self._hosts: dict[Hashable, dict[IPAddress, int]] = {}  # identity -> public IP -> subnets it announces

    def screen(self, peers: Mapping[IPNetwork, P]) -> Screened[P]:
        if self._input is not None:
            quick = self._changed_only(peers)
            if quick is not None:
                return quick
        return self._full(peers)

    def _full(self, peers: Mapping[IPNetwork, P]) -> Screened[P]:
        result = screen_peers(peers, **self._own)  # type: ignore[arg-type]
        self._input = None
        if not result.refused:
            self._input, self._accepted = dict(peers), dict(result.accepted)
            spans = sorted((int(s.network_address), int(s.broadcast_address)) for s in result.accepted)
            self._starts, self._ends = [a for a, _ in spans], [b for _, b in spans]
            self._hosts = {}
            for peer in result.accepted.values():
                claims = self._hosts.setdefault(peer.identity, {})
                claims[peer.public_ip] = claims.get(peer.public_ip, 0) + 1
        return result

    def _changed_only(self, peers: Mapping[IPNetwork, P]) -> Screened[P] | None:
        last = self._input
        assert last is not None
        added = [(s, p) for s, p in peers.items() if (old := last.get(s)) is not p and old != p]
        removed = [(s, last[s]) for s in last.keys() - peers.keys()]
        removed += [(s, last[s]) for s, _ in added if s in last]
        if len(added) + len(removed) > self.MAX_CHANGES:
            return None
        for subnet, peer in removed:
            self._drop(subnet, peer)
        for subnet, peer in added:
            if not self._fits(subnet, peer):
                self._input = None  # state half-updated: the full screening starts over
                return None
            self._add(subnet, peer)
        for subnet, _ in removed:
            self._accepted.pop(subnet, None)
        self._accepted.update(added)
        self._input = dict(peers)
        return Screened(accepted=dict(self._accepted), refused=())

    def _fits(self, subnet: IPNetwork, peer: P) -> bool:
        own = self._own
        if _own_conflict(subnet, peer, own["own_subnet"], self._own_range, own["own_ip"],  # type: ignore[arg-type]
                         own["own_identity"], own["identity_name"]):  # type: ignore[arg-type]
            return False
        start, end = int(subnet.network_address), int(subnet.broadcast_address)
        i = bisect.bisect_left(self._starts, start)
        # Accepted subnets do not overlap each other, so only the neighbours can overlap this one.
        if (i > 0 and self._ends[i - 1] >= start) or (i < len(self._starts) and self._starts[i] <= end):
            return False
        hosts = self._hosts.get(peer.identity)
        return not hosts or set(hosts) == {peer.public_ip}  # one host may hold several subnets

    def _add(self, subnet: IPNetwork, peer: P) -> None:
        start = int(subnet.network_address)
        i = bisect.bisect_left(self._starts, start)
        self._starts.insert(i, start)
        self._ends.insert(i, int(subnet.broadcast_address))
        claims = self._hosts.setdefault(peer.identity, {})
        claims[peer.public_ip] = claims.get(peer.public_ip, 0) + 1

    def _drop(self, subnet: IPNetwork, peer: P) -> None:
        i = bisect.bisect_left(self._starts, int(subnet.network_address))
        if i < len(self._starts) and self._starts[i] == int(subnet.network_address):
            del self._starts[i], self._ends[i]
        claims = self._hosts.get(peer.identity, {})
        claims[peer.public_ip] = claims.get(peer.public_ip, 1) - 1
        if claims[peer.public_ip] <= 0:
            del claims[peer.public_ip]
        if not claims:
            self._hosts.pop(peer.identity, None)


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
