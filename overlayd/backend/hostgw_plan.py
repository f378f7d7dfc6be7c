"""Pure planning for the host-gw backend: desired peers + the main table -> route changes.

flannel's host-gw: hosts on one L2 segment need no tunnel. For every remote host with
subnet S and public IP P we keep one plain route

    S via P dev <underlay> proto <ours>

so pod packets cross the underlay unencapsulated, with the pods' own addresses. The
kernel accepts such a route only when P is on-link (inside a network connected to the
underlay device); a peer that is not is refused here with a reason, never half-programmed.

Nothing here touches the kernel; hostgw.py executes the plan.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from overlayd.cluster.records import HostRecord

from .objects import IP6_RT_PRIO_USER, RT_SCOPE_LINK, RTN_UNICAST, RTPROT_KERNEL, IPAddress, IPNetwork, Route
from .peers import mismatch

TYPE = "host-gw"


@dataclass(frozen=True)
class PeerGateway:
    """A remote host as host-gw sees it: its public IP is the next hop for its subnet.

    Identity is the node name. host-gw has no tunnel key or MAC: its only per-peer kernel
    object is the route, and a route carries one subnet, so two records naming one gateway
    misroute nothing but their own subnets. What must stay unique is the host itself: a
    second record under a node name at another address is a clone or an impostor, refused
    by the shared rules (peers.screen_peers) like a cloned VTEP MAC or WireGuard key.
    """

    public_ip: IPAddress
    node: str
    create_revision: int = 0  # etcd create revision of the peer's key: its age (0: unknown)

    @property
    def identity(self) -> str:
        return self.node

    @classmethod
    def from_record_untrusted(cls, record: HostRecord, create_revision: int = 0) -> PeerGateway:
        """RecordError (backend_mismatch) unless the record is a host-gw host's."""
        if record.backend.get("type") != TYPE:
            raise mismatch(record.public_ip, f"backend type {record.backend.get('type')!r}, expected {TYPE!r}")
        return cls(public_ip=record.public_ip, node=record.node, create_revision=create_revision)


def onlink_networks(routes: Sequence[Route], ifindex: int) -> list[IPNetwork]:
    """The networks directly connected to device `ifindex`: its gateway-less routes
    (IPv4 marks them link-scope; IPv6 lists them as kernel routes). A device-wide
    default route is no segment, so /0 does not count."""
    return [r.dst for r in routes
            if r.oif == ifindex and r.gateway is None and r.type == RTN_UNICAST and r.dst.prefixlen > 0
            and (r.scope == RT_SCOPE_LINK or r.protocol == RTPROT_KERNEL)]


def offlink_refusals(peers: Mapping[IPNetwork, PeerGateway], onlink: Sequence[IPNetwork],
                     underlay: str) -> dict[IPNetwork, str]:
    """Peers whose public IP is on none of the underlay's connected networks, with the reason."""
    shown = ", ".join(str(n) for n in onlink) or "none"
    return {subnet: (f"public IP {peer.public_ip} is not on-link: host-gw needs every host on the "
                     f"underlay's L2 segment ({underlay}: {shown}); use the vxlan or wireguard "
                     "backend across routers")
            for subnet, peer in peers.items()
            if not any(peer.public_ip in network for network in onlink)}


@dataclass(frozen=True)
class SetRoute:
    dst: IPNetwork
    gateway: IPAddress
    new: bool  # False: replaces a route of ours (or in our slot) that differs


@dataclass(frozen=True)
class RoutePlan:
    set: tuple[SetRoute, ...]
    delete: tuple[Route, ...]  # ours, not wanted (after the sets: a changed route never goes missing)


def plan_routes(desired: Mapping[IPNetwork, PeerGateway], routes: Sequence[Route], *, ifindex: int,
                protocol: int) -> RoutePlan:
    """Make the main table hold `S via P dev ifindex proto protocol` for each desired peer.

    Only routes with our protocol mark are ours to delete: the underlay device is the
    host's, not ours. What already matches yields nothing, so a restart causes no gap.
    """
    by_dst: dict[IPNetwork, list[Route]] = defaultdict(list)
    for route in routes:
        by_dst[route.dst].append(route)
    sets: list[SetRoute] = []
    handled: set[Route] = set()
    for subnet in sorted(desired, key=lambda s: (s.version, s)):
        gateway = desired[subnet].public_ip
        # `route replace` acts on the slot (table, dst, tos, metric), whoever holds it; the
        # caller has refused subnets whose slot a foreign route holds (overlap.foreign_route_conflicts).
        slot = [r for r in by_dst[subnet] if r.tos == 0 and r.priority == _default_priority(subnet)]
        matching = [r for r in slot if r.type == RTN_UNICAST and r.oif == ifindex and r.gateway == gateway
                    and r.protocol == protocol]
        if matching:
            handled.add(matching[0])  # any other route of ours in the slot is a stray
        else:
            handled.update(slot)  # overwritten by the replace
            sets.append(SetRoute(subnet, gateway, new=not slot))
    deletes = tuple(r for r in sorted(routes, key=lambda r: (r.dst.version, r.dst, r.priority))
                    if r not in handled and r.protocol == protocol)
    return RoutePlan(set=tuple(sets), delete=deletes)


def _default_priority(subnet: IPNetwork) -> int:
    return 0 if subnet.version == 4 else IP6_RT_PRIO_USER
