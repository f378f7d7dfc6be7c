"""Keeping the overlay off the host's own networks.

A cluster network that contains the underlay (`network init --cidr 198.18.0.0/16` on
hosts in 198.18.0.0/24) lets a peer record name the underlay's subnet, and routing that
subnet into the tunnel cuts the host off from etcd and from every peer for good. Two
guards: a daemon refuses to start when the cluster network overlaps a network of its
own (`check_cluster_network`), and a peer subnet that a route we do not own already
claims is refused, never replaced (`foreign_route_conflicts`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from overlayd.errors import ConfigError

from .netlink import Netlink
from .objects import RT_SCOPE_LINK, RTPROT_KERNEL, Address, IPNetwork, Link, Route

_RT_SCOPE_UNIVERSE = 0


@dataclass(frozen=True)
class HostNetwork:
    """A network this host is directly on: one of its global addresses with its prefix."""

    network: IPNetwork
    link: str


def host_networks(links: Sequence[Link], addresses: Sequence[Address], *, ours: Collection[str]) -> list[HostNetwork]:
    """The networks of the host's global addresses, except on the links named in `ours`
    (our bridge and tunnel device, whose addresses lie in the cluster network by design)."""
    names = {link.index: link.name for link in links}
    found = []
    for address in addresses:
        name = names.get(address.ifindex, f"#{address.ifindex}")
        if address.scope == _RT_SCOPE_UNIVERSE and name not in ours:
            found.append(HostNetwork(address.interface.network, name))
    return found


def check_cluster_network(network: IPNetwork, local: Iterable[HostNetwork]) -> None:
    """ConfigError if the cluster network overlaps a network the host is on."""
    for own in local:
        if own.network.version == network.version and own.network.overlaps(network):
            raise ConfigError(f"the cluster network {network} overlaps this host's network {own.network} on "
                              f"{own.link}: routing it into the overlay would cut the host off; "
                              "choose another cluster network (overlayctl network init --cidr)")


def check_cluster_network_on_host(ipr: Any, network: IPNetwork, *, ours: Collection[str]) -> None:
    """check_cluster_network against the links and addresses of the namespace `ipr` serves."""
    nl = Netlink(ipr)
    check_cluster_network(network, host_networks(nl.links(), nl.addresses(), ours=ours))


def foreign_route_conflicts(
    subnets: Iterable[IPNetwork], routes: Sequence[Route], *, ifindex: int | None, protocol: int
) -> dict[IPNetwork, str]:
    """Peer subnets we must not route, with the reason: a route that is not ours (neither
    our mark nor on our device `ifindex`; None for a backend without a device of its own,
    such as host-gw on the host's underlay device) has the same destination, which a
    replace would overwrite, or is a directly connected route overlapping the subnet.

    Wider gateway routes (the default route, a site's aggregate) may contain peer subnets:
    a more specific route is how the overlay is reached at all.
    """
    foreign = [r for r in routes if r.protocol != protocol and (ifindex is None or r.oif != ifindex)]
    # Integers and tuples, not ip_network methods: this runs over thousands of peer subnets.
    same_dst = {_key(r.dst): r for r in foreign}
    connected = [(r.dst.version, int(r.dst.network_address), int(r.dst.broadcast_address), r)
                 for r in foreign if _connected(r)]
    conflicts: dict[IPNetwork, str] = {}
    for subnet in subnets:
        route = same_dst.get(_key(subnet))
        if route is None and connected:
            low, high = int(subnet.network_address), int(subnet.broadcast_address)
            route = next((r for version, start, end, r in connected
                          if version == subnet.version and start <= high and low <= end), None)
        if route is not None:
            conflicts[subnet] = f"subnet is taken by a route that is not ours: {_describe(route)}"
    return conflicts


def _key(network: IPNetwork) -> tuple[int, int, int]:
    return network.version, int(network.network_address), network.prefixlen


def _connected(route: Route) -> bool:
    # IPv4 marks connected routes link-scope; IPv6 lists them as kernel routes without a gateway.
    return route.scope == RT_SCOPE_LINK or (route.protocol == RTPROT_KERNEL and route.gateway is None)


def _describe(route: Route) -> str:
    via = f" via {route.gateway}" if route.gateway is not None else ""
    dev = f" dev #{route.oif}" if route.oif is not None else ""
    return f"{route.dst}{via}{dev} proto {route.protocol}"
