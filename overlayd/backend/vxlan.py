"""The VXLAN backend: a converging reconciler for one VXLAN device and its peers.

`setup()` adopts, fixes or (if VNI/port/local/underlay differ) recreates the device;
`reconcile(peers)` reads routes, neighbours and FDB once, plans with vxlan_plan and
applies only the differences. Kernel state is left in place on exit: a restarted
daemon adopts it without a traffic gap. `teardown()` is for explicit removal only.

Synchronous pyroute2 code; call it from threads in the host's network namespace.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from overlayd.cluster.records import HostRecord
from overlayd.errors import UsageError

from .addresses import converge_addresses
from .contract import BackendContext, port_of, Observations, ReconcileResult, Refusal
from .mac import parse_mac_untrusted
from .netlink import Netlink
from .nlwire import Batch
from .objects import RTPROT_OVERLAYD, IPAddress, IPNetwork, Link, Route
from .overlap import foreign_route_conflicts
from .peers import PeerVtep, ScreenCache, Screened
from .underlay import Underlay
from .vxlan_plan import (
    VXLAN_OVERHEAD,
    Action,
    Change,
    DeleteFdb,
    DeleteNeighbour,
    DeleteRoute,
    Observed,
    SetFdb,
    SetNeighbour,
    SetRoute,
    VxlanSpec,
    device_address,
    gateway_of_peer,
    link_changes,
    plan_peer_changes,
    plan_peers,
    recreate_reason,
    vxlan_mtu,
)

log = logging.getLogger(__name__)


def from_context(ctx: BackendContext) -> VxlanBackend:
    """The registry's factory (registry.py)."""
    return VxlanBackend.for_underlay(ctx.ipr, f"{ctx.link_prefix}.vx", ctx.vni or 1, port_of(ctx), ctx.underlay,
                                     ctx.vtep_mac, mtu=ctx.mtu)


class VxlanBackend:
    """Kernel VXLAN, flannel's L3 scheme: per peer an onlink route via the peer's VTEP
    address, a permanent neighbour entry for it and an FDB entry to the peer's public IP."""

    type = "vxlan"
    overhead = VXLAN_OVERHEAD[6]  # the larger, IPv6-underlay figure; vxlan_mtu() picks the right one
    observes = False
    def __init__(
        self,
        ipr: Any,
        device: str,
        vni: int,
        port: int,
        local_ip: IPAddress,
        underlay_ifindex: int,
        mtu: int,
        vtep_mac: str,
        route_protocol: int = RTPROT_OVERLAYD,
    ) -> None:
        """`mtu` is the VXLAN device's own MTU (see `vxlan_mtu`); `vtep_mac` is persisted by the caller.

        `route_protocol` marks our routes and addresses: every main-table route with it
        is considered this backend's and deleted when not desired.
        """
        self._nl = Netlink(ipr)
        self.spec = VxlanSpec(
            name=device,
            vni=vni,
            port=port,
            local_ip=local_ip,
            underlay_ifindex=underlay_ifindex,
            mtu=mtu,
            mac=parse_mac_untrusted(vtep_mac),
        )
        self.route_protocol = route_protocol
        self._own_subnet: IPNetwork | None = None
        self._programmed: dict[IPNetwork, PeerVtep] | None = None  # as last applied; None: unknown
        self._programmed_on = 0  # the device's ifindex then
        self._routes: list[Route] = []  # the main table as of the last full reconcile
        self._screen: ScreenCache[PeerVtep] | None = None  # screening at the cost of each change

    @classmethod
    def for_underlay(
        cls,
        ipr: Any,
        device: str,
        vni: int,
        port: int,
        underlay: Underlay,
        vtep_mac: str,
        *,
        mtu: int | None = None,
        route_protocol: int = RTPROT_OVERLAYD,
    ) -> VxlanBackend:
        """Backend on a detected underlay; MTU defaults to the underlay's minus the VXLAN overhead."""
        return cls(
            ipr,
            device,
            vni,
            port,
            underlay.ip,
            underlay.ifindex,
            mtu if mtu is not None else vxlan_mtu(underlay.mtu, underlay.ip.version),
            vtep_mac,
            route_protocol,
        )

    @property
    def mtu(self) -> int:
        return self.spec.mtu

    def backend_data(self) -> dict[str, str]:
        """What peers need to reach us, published in our host record."""
        return {"type": "vxlan", "vtep_mac": self.spec.mac}

    def peer_from_record_untrusted(self, record: HostRecord, create_revision: int = 0) -> PeerVtep:
        return PeerVtep.from_backend_data_untrusted(record.public_ip, record.backend, create_revision)

    def setup(self, own_subnet: IPNetwork) -> None:
        """Converge the device for `own_subnet`."""
        self._own_subnet = own_subnet
        self._ensure_device(own_subnet)

    def observe(self) -> Observations:
        return Observations()  # the kernel's VXLAN keeps no per-peer state worth reporting

    def reconcile(self, peers: Mapping[IPNetwork, PeerVtep], *, full: bool = False) -> ReconcileResult:
        """Make routes, neighbours and FDB match `peers` (our own subnet must not be in it).

        A full reconcile dumps the kernel and plans against what is there. Otherwise, after a
        full one succeeded, only the peers that changed since are planned (vxlan_plan's
        plan_peer_changes), against what we programmed: dumping thousands of routes,
        neighbours and FDB entries costs over a second. Anything changed behind our back is
        put right by the next full reconcile (the daemon's periodic resync)."""
        own_subnet = self._own_subnet
        if own_subnet is None:
            raise UsageError("VxlanBackend.reconcile() called before setup()")
        # Cheap (one link get + one address dump) and it heals a device deleted behind our back.
        link, repaired = self._ensure_device(own_subnet)
        if repaired or link.index != self._programmed_on or not self._routes_still_there(link.index):
            full = True  # a device recreated, or set down and up, lost its routes and neighbours
        if self._screen is None or full or self._programmed is None:
            self._screen = ScreenCache(own_subnet=own_subnet, own_ip=self.spec.local_ip, own_identity=self.spec.mac)
        screened = self._screen.screen(peers)
        if full or self._programmed is None:
            self._programmed = None  # until this run is applied
            observed = Observed(
                routes=self._nl.main_routes(own_subnet.version),
                neighbours=self._nl.neighbours(own_subnet.version, link.index),
                fdb=self._nl.fdb(link.index),
            )
            self._routes = observed.routes
            accepted, refusals = self._checked(screened, link.index)
            actions = plan_peers(accepted, observed, ifindex=link.index, protocol=self.route_protocol)
            self._nl.apply_batch(self._batch(link.index, actions))  # thousands of actions at a cold start
        else:
            accepted, refusals = self._checked(screened, link.index, checked_before=self._programmed)
            actions = plan_peer_changes(self._programmed, accepted, ifindex=link.index, protocol=self.route_protocol)
            self._programmed = None  # until this run is applied: a failed action means a full one next
            if not self._apply_changes(link.index, actions):
                return self.reconcile(peers, full=True)  # someone else's route is there: see whose, and refuse
        self._programmed, self._programmed_on = accepted, link.index
        counts = Counter(action.change for action in actions)
        result = ReconcileResult(
            added=counts[Change.ADD],
            changed=counts[Change.CHANGE],
            removed=counts[Change.REMOVE],
            refused=tuple(refusals),
        )
        if actions:
            log.info(
                "vxlan reconcile: %d added, %d changed, %d removed", result.added, result.changed, result.removed
            )
        return result

    def _routes_still_there(self, ifindex: int) -> bool:
        """One route lookup: a device set down (even if up again) has lost every route on it."""
        if not self._programmed:
            return True
        subnet = next(iter(self._programmed))
        return self._nl.route_oif(gateway_of_peer(subnet)) == ifindex

    def _apply_changes(self, ifindex: int, actions: list[Action]) -> bool:
        """Apply incrementally planned actions; a new subnet's route is only added where no route to
        it exists (the kernel may have one we did not see: we did not dump). False on such a route."""
        new_routes: list[SetRoute] = []
        others: list[Action] = []
        for action in actions:
            (new_routes if isinstance(action, SetRoute) and action.change is Change.ADD else others).append(action)
        for route in new_routes:
            if not self._nl.add_onlink_route(route.dst, route.gateway, ifindex, self.route_protocol):
                return False
        self._nl.apply_batch(self._batch(ifindex, others))
        return True

    def _checked(self, screened: Screened[PeerVtep], ifindex: int,
                 checked_before: Mapping[IPNetwork, PeerVtep] | None = None) -> tuple[dict[IPNetwork, PeerVtep], list[Refusal]]:
        """Screened peers less those whose subnet a route not ours already claims (as of the
        last kernel dump: such routes come from the operator and rarely change). Subnets in
        checked_before passed this check already."""
        subnets = (screened.accepted if checked_before is None
                   else [subnet for subnet in screened.accepted if subnet not in checked_before])
        taken = foreign_route_conflicts(subnets, self._routes, ifindex=ifindex, protocol=self.route_protocol)
        refusals = [*screened.refused, *(Refusal(subnet, reason) for subnet, reason in taken.items())]
        for refusal in refusals:
            log.warning("refusing peer %s: %s", refusal.subnet, refusal.reason)
        accepted = dict(screened.accepted)  # a copy keeps the hashes (see screen_peers)
        for subnet in taken:
            del accepted[subnet]
        return accepted, refusals

    def teardown(self) -> None:
        """Delete the device (its routes, neighbours and FDB go with it) and our stray routes."""
        link = self._nl.link(self.spec.name)
        if link is not None:
            self._nl.delete_link(link)
        for version in (4, 6):
            for route in self._nl.main_routes(version):
                if route.protocol == self.route_protocol:
                    self._nl.delete_route(route)
        self._own_subnet = None
        self._programmed = None

    def _ensure_device(self, own_subnet: IPNetwork) -> tuple[Link, bool]:
        """The device as the spec wants it; True if anything had to change (a device recreated,
        set up again or readdressed has lost the routes and neighbours on it)."""
        spec = self.spec
        link = self._nl.link(spec.name)
        repaired = link is None
        if link is not None:
            reason = recreate_reason(spec, link)
            if reason is not None:
                log.warning("recreating VXLAN device %s: %s", spec.name, reason)
                self._nl.delete_link(link)
                link, repaired = None, True
        if link is None:
            link = self._create_device()
            log.info("created VXLAN device %s (VNI %d, port %d, local %s)",
                     spec.name, spec.vni, spec.port, spec.local_ip)
        changes = link_changes(spec, link)
        if changes:
            self._nl.set_link(link, **changes)
        plan = converge_addresses(self._nl, link.index, {device_address(own_subnet)}, self.route_protocol)
        return link, repaired or bool(changes) or bool(plan.add or plan.remove)

    def _create_device(self) -> Link:
        spec = self.spec
        local_key = "vxlan_local" if spec.local_ip.version == 4 else "vxlan_local6"
        return self._nl.create_link(
            spec.name,
            "vxlan",
            vxlan_id=spec.vni,
            vxlan_port=spec.port,
            vxlan_link=spec.underlay_ifindex,
            vxlan_learning=0,  # peers are known from etcd; learning would let packets rewrite the FDB
            address=spec.mac,
            mtu=spec.mtu,
            **{local_key: str(spec.local_ip)},
        )

    def _batch(self, ifindex: int, actions: list[Action]) -> Batch:
        """`actions` as one batch of netlink requests (sent by Netlink.apply_batch)."""
        batch = Batch()
        for action in actions:
            match action:
                case SetFdb(mac=mac, dst=dst):
                    batch.replace_fdb(ifindex, mac, dst)
                case SetNeighbour(ip=ip, mac=mac):
                    batch.replace_neighbour(ifindex, ip, mac)
                case SetRoute(dst=dst, gateway=gateway):
                    batch.replace_onlink_route(dst, gateway, ifindex, self.route_protocol)
                case DeleteRoute(route=route):
                    batch.delete_route(route)
                case DeleteNeighbour(neighbour=neighbour):
                    batch.delete_neighbour(neighbour)
                case DeleteFdb(entry=entry):
                    batch.delete_fdb(entry)
        return batch
