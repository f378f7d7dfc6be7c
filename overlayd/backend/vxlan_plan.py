"""Pure planning for the VXLAN backend: desired state + observed kernel state -> actions.

flannel's L3 VXLAN scheme: each host's VXLAN device carries its subnet's network
address; for every remote host with subnet S, public IP P and VTEP MAC M we keep

    route      S via S.network_address dev <vxlan> onlink proto <ours>
    neighbour  S.network_address -> M (permanent) on <vxlan>
    fdb        M -> dst P (permanent) on <vxlan>

Nothing here touches the kernel; vxlan.py executes the actions in the order given.
`plan_peers` plans from a dump of the kernel (start-up, periodic repair); between dumps,
`plan_peer_changes` plans one change of the peer set from the set last programmed, in time
that grows with the change, not with the cluster (a single new peer among thousands).
"""

from __future__ import annotations

import enum
import ipaddress
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .objects import (
    IP6_RT_PRIO_USER,
    NUD_PERMANENT,
    RT_TABLE_MAIN,
    RTN_UNICAST,
    RTPROT_KERNEL,
    FdbEntry,
    IPAddress,
    IPInterface,
    IPNetwork,
    Link,
    Neighbour,
    Route,
)
from .peers import PeerVtep

# Outer Ethernet + IP + UDP + VXLAN headers: 14 + 20 + 8 + 8 (IPv4), 14 + 40 + 8 + 8 (IPv6).
VXLAN_OVERHEAD = {4: 50, 6: 70}


def vxlan_mtu(underlay_mtu: int, underlay_version: int) -> int:
    """The largest inner MTU that fits the underlay without fragmentation."""
    return underlay_mtu - VXLAN_OVERHEAD[underlay_version]


# -- the device ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VxlanSpec:
    name: str
    vni: int
    port: int
    local_ip: IPAddress
    underlay_ifindex: int
    mtu: int
    mac: str


def recreate_reason(spec: VxlanSpec, link: Link) -> str | None:
    """Why an existing link named like our device cannot be adopted, or None if it can.

    VNI, port, local address, underlay device and learning are fixed at creation for
    our purposes; MTU, MAC and up/down are fixed in place by `link_changes`.
    """
    if link.kind != "vxlan" or link.vxlan is None:
        return f"it is a {link.kind or 'physical'} link, not a VXLAN device"
    have = link.vxlan
    diffs = [
        f"{what} {old} -> {new}"
        for what, old, new in (
            ("VNI", have.vni, spec.vni),
            ("port", have.port, spec.port),
            ("local", have.local, spec.local_ip),
            ("underlay ifindex", have.link, spec.underlay_ifindex),
            ("learning", have.learning, False),
        )
        if old != new
    ]
    return ", ".join(diffs) or None


def link_changes(spec: VxlanSpec, link: Link) -> dict[str, Any]:
    """pyroute2 `link("set")` attributes that bring an adoptable device in line."""
    changes: dict[str, Any] = {}
    if link.mtu != spec.mtu:
        changes["mtu"] = spec.mtu
    if link.mac != spec.mac:
        changes["address"] = spec.mac
    if not link.up:
        changes["state"] = "up"
    return changes


def device_address(own_subnet: IPNetwork) -> IPInterface:
    """The VXLAN device's address: our subnet's network address as a host address (like flannel).

    The host uses it as source address toward remote pods; peers name it as next hop for our
    subnet (resolved by their permanent neighbour entry, so it need not answer ARP).
    """
    ip = own_subnet.network_address
    return ipaddress.ip_interface(f"{ip}/{ip.max_prefixlen}")


# -- the peers -------------------------------------------------------------------------------


class Change(enum.Enum):
    ADD = "added"
    CHANGE = "changed"
    REMOVE = "removed"


@dataclass(frozen=True)
class SetFdb:
    mac: str
    dst: IPAddress
    change: Change


@dataclass(frozen=True)
class SetNeighbour:
    ip: IPAddress
    mac: str
    change: Change


@dataclass(frozen=True)
class SetRoute:
    dst: IPNetwork
    gateway: IPAddress
    change: Change


@dataclass(frozen=True)
class DeleteRoute:
    route: Route
    change: Change = Change.REMOVE


@dataclass(frozen=True)
class DeleteNeighbour:
    neighbour: Neighbour
    change: Change = Change.REMOVE


@dataclass(frozen=True)
class DeleteFdb:
    entry: FdbEntry
    change: Change = Change.REMOVE


Action = SetFdb | SetNeighbour | SetRoute | DeleteRoute | DeleteNeighbour | DeleteFdb


@dataclass(frozen=True)
class Observed:
    """One dump of each table, for the IP version of the overlay."""

    routes: Sequence[Route]  # main table
    neighbours: Sequence[Neighbour]  # on our VXLAN device
    fdb: Sequence[FdbEntry]  # on our VXLAN device


def gateway_of_peer(subnet: IPNetwork) -> IPAddress:
    return subnet.network_address


def plan_peers(
    desired: Mapping[IPNetwork, PeerVtep],
    observed: Observed,
    *,
    ifindex: int,
    protocol: int,
) -> list[Action]:
    """Actions that make routes, neighbours and FDB on device `ifindex` match `desired`.

    Order: L2 first (FDB, neighbours), then routes, so traffic never meets a route
    whose next hop cannot be resolved; removals in the reverse order. What already
    matches yields no action, so a daemon restart causes no traffic gap.
    """
    fdb_sets, fdb_deletes = _plan_fdb(desired, observed.fdb)
    neighbour_sets, neighbour_deletes = _plan_neighbours(desired, observed.neighbours)
    route_sets, route_deletes = _plan_routes(desired, observed.routes, ifindex, protocol)
    return fdb_sets + neighbour_sets + route_sets + route_deletes + neighbour_deletes + fdb_deletes


_RT_SCOPE_UNIVERSE = 0  # the scope of a route with a gateway

# Each planner returns (creations and changes, deletions).
_Halves = tuple[list[Action], list[Action]]


def _plan_fdb(desired: Mapping[IPNetwork, PeerVtep], observed: Sequence[FdbEntry]) -> _Halves:
    # The kernel keeps one remote per unicast MAC (appends only add remotes to the
    # all-zero and multicast flood entries), so a changed peer is one replace.
    want = {peer.vtep_mac: peer.public_ip for peer in desired.values()}  # screened: one host per MAC
    have: dict[str, list[FdbEntry]] = defaultdict(list)
    for entry in observed:
        have[entry.mac].append(entry)
    sets: list[Action] = []
    for mac in sorted(want):
        if not have[mac]:
            sets.append(SetFdb(mac, want[mac], Change.ADD))
        elif not any(_is_plain_remote(e, want[mac]) for e in have[mac]):
            sets.append(SetFdb(mac, want[mac], Change.CHANGE))
    deletes: list[Action] = [DeleteFdb(e) for mac in sorted(set(have) - set(want)) for e in have[mac]]
    return sets, deletes


def _is_plain_remote(entry: FdbEntry, dst: IPAddress) -> bool:
    # port/vni are reported only when they differ from the device's: ours never do.
    return entry.dst == dst and entry.port is None and entry.vni is None


def _plan_neighbours(desired: Mapping[IPNetwork, PeerVtep], observed: Sequence[Neighbour]) -> _Halves:
    want = {gateway_of_peer(subnet): peer.vtep_mac for subnet, peer in desired.items()}
    have = {n.ip: n for n in observed}
    sets: list[Action] = []
    for ip in sorted(want):
        current = have.get(ip)
        if current is None:
            sets.append(SetNeighbour(ip, want[ip], Change.ADD))
        elif current.mac != want[ip] or not current.permanent:
            sets.append(SetNeighbour(ip, want[ip], Change.CHANGE))
    # Only permanent entries are ours; the kernel ages out the rest by itself.
    deletes: list[Action] = [
        DeleteNeighbour(n) for n in sorted(observed, key=lambda n: n.ip) if n.permanent and n.ip not in want
    ]
    return sets, deletes


def _plan_routes(
    desired: Mapping[IPNetwork, PeerVtep], observed: Sequence[Route], ifindex: int, protocol: int
) -> _Halves:
    by_dst: dict[IPNetwork, list[Route]] = defaultdict(list)
    for route in observed:
        by_dst[route.dst].append(route)
    sets: list[Action] = []
    handled: set[Route] = set()
    for subnet in sorted(desired):
        gateway = gateway_of_peer(subnet)
        # `route replace` acts on the slot (table, dst, tos, metric), whoever holds it.
        slot = [r for r in by_dst[subnet] if r.tos == 0 and r.priority == _default_priority(subnet)]
        matching = [r for r in slot if _is_desired_route(r, gateway, ifindex, protocol)]
        if matching:
            handled.add(matching[0])  # any other route of ours in the slot is a stray
        else:
            handled.update(slot)  # overwritten by the replace
            sets.append(SetRoute(subnet, gateway, Change.CHANGE if slot else Change.ADD))
    deletes: list[Action] = [
        DeleteRoute(r)
        for r in sorted(observed, key=lambda r: (r.dst, r.priority))
        if r not in handled and _is_ours(r, ifindex, protocol)
    ]
    return sets, deletes


def _default_priority(subnet: IPNetwork) -> int:
    return 0 if subnet.version == 4 else IP6_RT_PRIO_USER


def _is_desired_route(route: Route, gateway: IPAddress, ifindex: int, protocol: int) -> bool:
    return (
        route.type == RTN_UNICAST
        and route.oif == ifindex
        and route.gateway == gateway
        and route.onlink
        and route.protocol == protocol
    )


def _is_ours(route: Route, ifindex: int, protocol: int) -> bool:
    """Routes we may delete: those with our mark, and any on our device the kernel did not make."""
    return route.protocol == protocol or (route.oif == ifindex and route.protocol != RTPROT_KERNEL)


# -- planning a change without a dump --------------------------------------------------------


def programmed_state(peers: Mapping[IPNetwork, PeerVtep], *, ifindex: int, protocol: int) -> Observed:
    """Our routes, neighbours and FDB entries as a dump shows them once the actions of
    `plan_peers(peers, ...)` are applied (objects that are not ours are not modelled)."""
    return Observed(
        routes=[
            Route(dst=subnet, table=RT_TABLE_MAIN, protocol=protocol, type=RTN_UNICAST, oif=ifindex,
                  gateway=gateway_of_peer(subnet), onlink=True, priority=_default_priority(subnet), tos=0,
                  scope=_RT_SCOPE_UNIVERSE)
            for subnet in peers
        ],
        neighbours=[Neighbour(ifindex, gateway_of_peer(subnet), peer.vtep_mac, NUD_PERMANENT)
                    for subnet, peer in peers.items()],
        fdb=[FdbEntry(ifindex, mac, dst) for mac, dst in {p.vtep_mac: p.public_ip for p in peers.values()}.items()],
    )


def plan_peer_changes(
    before: Mapping[IPNetwork, PeerVtep],
    after: Mapping[IPNetwork, PeerVtep],
    *,
    ifindex: int,
    protocol: int,
) -> list[Action]:
    """The actions of `plan_peers(after, programmed_state(before))`, planned from the peers that
    changed only: for a kernel that a reconcile to `before` left complete, with nothing changed
    behind our back since (the periodic full reconcile repairs that case).

    FDB entries are per VTEP MAC and one host may hold several subnets, so every peer sharing a
    MAC with a changed peer takes part; all others cannot produce an action and are left out.
    """
    macs = {peer.vtep_mac for subnet, peer in after.items() if before.get(subnet) != peer}
    macs.update(peer.vtep_mac for subnet, peer in before.items() if after.get(subnet) != peer)
    if not macs:
        return []
    involved_after = {subnet: peer for subnet, peer in after.items() if peer.vtep_mac in macs}
    involved_before = {subnet: peer for subnet, peer in before.items() if peer.vtep_mac in macs}
    observed = programmed_state(involved_before, ifindex=ifindex, protocol=protocol)
    return plan_peers(involved_after, observed, ifindex=ifindex, protocol=protocol)
