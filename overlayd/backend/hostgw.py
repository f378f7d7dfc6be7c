"""The host-gw backend: plain routes to peers on the same L2 segment, no encapsulation.

No device of its own: `setup()` only checks the underlay device; `reconcile(peers)`
screens the peers, refuses those that are not on-link, reads the main table once,
plans with hostgw_plan and applies only the differences. Routes stay in place on exit,
so a restarted daemon adopts them without a traffic gap.

Synchronous pyroute2 code; call it from threads in the host's network namespace.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from overlayd.cluster.records import HostRecord
from overlayd.errors import KernelError, UsageError

from .contract import BackendContext, Observations, ReconcileResult, Refusal
from .hostgw_plan import TYPE, PeerGateway, offlink_refusals, onlink_networks, plan_routes
from .netlink import Netlink
from .objects import RTPROT_OVERLAYD, IPNetwork
from .overlap import foreign_route_conflicts
from .peers import screen_peers
from .underlay import Underlay

log = logging.getLogger(__name__)


def from_context(ctx: BackendContext) -> HostGwBackend:
    """The registry's factory (registry.py)."""
    return HostGwBackend(ctx.ipr, ctx.underlay, node=ctx.node, mtu=ctx.mtu)


class HostGwBackend:
    type = TYPE
    overhead = 0  # pod packets travel as they are: the pods get the underlay's full MTU
    observes = False  # plain routes keep no per-peer state

    def __init__(self, ipr: Any, underlay: Underlay, *, node: str, mtu: int | None = None,
                 route_protocol: int = RTPROT_OVERLAYD) -> None:
        """`route_protocol` marks our routes: every main-table route with it is considered
        this backend's and deleted when not desired."""
        self._nl = Netlink(ipr)
        self.underlay = underlay
        self.node = node
        self._mtu = mtu if mtu is not None else underlay.mtu
        self.route_protocol = route_protocol
        self._own_subnet: IPNetwork | None = None

    @property
    def mtu(self) -> int:
        return self._mtu

    def backend_data(self) -> dict[str, str]:
        return {"type": TYPE}  # peers need only our public IP, which every record carries

    def peer_from_record_untrusted(self, record: HostRecord, create_revision: int = 0) -> PeerGateway:
        return PeerGateway.from_record_untrusted(record, create_revision)

    def setup(self, own_subnet: IPNetwork) -> None:
        self._underlay_index()
        self._own_subnet = own_subnet

    def observe(self) -> Observations:
        return Observations()

    def reconcile(self, peers: Mapping[IPNetwork, PeerGateway], *, full: bool = False) -> ReconcileResult:
        """Make our routes match `peers` (our own subnet must not be in it)."""
        own_subnet = self._own_subnet
        if own_subnet is None:
            raise UsageError("HostGwBackend.reconcile() called before setup()")
        ifindex = self._underlay_index()
        screened = screen_peers(peers, own_subnet=own_subnet, own_ip=self.underlay.ip, own_identity=self.node,
                                identity_name="node name")
        routes = self._nl.main_routes(own_subnet.version)
        refused = offlink_refusals(screened.accepted, onlink_networks(routes, ifindex), self.underlay.ifname)
        # The underlay device is the host's: routes on it are foreign unless they carry our mark.
        refused |= foreign_route_conflicts([s for s in screened.accepted if s not in refused], routes,
                                           ifindex=None, protocol=self.route_protocol)
        refusals = [*screened.refused, *(Refusal(subnet, reason) for subnet, reason in sorted(refused.items()))]
        for refusal in refusals:
            log.warning("refusing peer %s: %s", refusal.subnet, refusal.reason)
        accepted = {subnet: peer for subnet, peer in screened.accepted.items() if subnet not in refused}
        plan = plan_routes(accepted, routes, ifindex=ifindex, protocol=self.route_protocol)
        for change in plan.set:
            self._nl.replace_gateway_route(change.dst, change.gateway, ifindex, self.route_protocol)
        for route in plan.delete:
            self._nl.delete_route(route)
        result = ReconcileResult(added=sum(c.new for c in plan.set), changed=sum(not c.new for c in plan.set),
                                 removed=len(plan.delete), refused=tuple(refusals))
        if plan.set or plan.delete:
            log.info("host-gw reconcile: %d added, %d changed, %d removed", result.added, result.changed,
                     result.removed)
        return result

    def _underlay_index(self) -> int:
        # Looked up by name each time: an underlay device recreated by the admin gets a new index.
        link = self._nl.link(self.underlay.ifname)
        if link is None:
            raise KernelError(f"underlay device {self.underlay.ifname} is gone")
        return link.index
