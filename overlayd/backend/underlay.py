"""Underlay detection: which address and interface carry this host's tunnel traffic.

Given a configured public IP, or an interface name, or neither (then the interface of
the default route, IPv4 preferred), find the public IP, the interface and its MTU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from overlayd.errors import ConfigError

from .netlink import Netlink
from .objects import RT_TABLE_MAIN, RTN_UNICAST, Address, IPAddress, Link, Route

_RT_SCOPE_UNIVERSE = 0


@dataclass(frozen=True)
class Underlay:
    ip: IPAddress
    ifname: str
    ifindex: int
    mtu: int


def choose_underlay(
    links: Sequence[Link],
    addresses: Sequence[Address],
    routes: Sequence[Route],
    *,
    public_ip: IPAddress | None = None,
    interface: str | None = None,
) -> Underlay:
    """Pick the underlay from a snapshot of links, addresses and main-table routes."""
    by_index = {link.index: link for link in links}
    if public_ip is not None:
        owner = next((a.ifindex for a in addresses if a.interface.ip == public_ip), None)
        if owner is None or owner not in by_index:
            raise ConfigError(f"public IP {public_ip} is not assigned to any interface of this host")
        link = by_index[owner]
        if interface is not None and link.name != interface:
            raise ConfigError(f"public IP {public_ip} is on {link.name}, not on the configured interface {interface}")
        return Underlay(ip=public_ip, ifname=link.name, ifindex=link.index, mtu=link.mtu)

    if interface is not None:
        named = next((lk for lk in links if lk.name == interface), None)
        if named is None:
            raise ConfigError(f"interface {interface} not found")
        for version in (4, 6):
            ip = _first_global_ip(addresses, named.index, version)
            if ip is not None:
                return Underlay(ip=ip, ifname=named.name, ifindex=named.index, mtu=named.mtu)
        raise ConfigError(f"interface {interface} has no global IP address")

    for version in (4, 6):
        defaults = sorted(
            (
                r
                for r in routes
                if r.dst.version == version
                and r.dst.prefixlen == 0
                and r.table == RT_TABLE_MAIN
                and r.type == RTN_UNICAST
                and r.oif in by_index
            ),
            key=lambda r: r.priority,
        )
        for route in defaults:
            link = by_index[route.oif]  # type: ignore[index]  # filtered above
            ip = _first_global_ip(addresses, link.index, version)
            if ip is not None:
                return Underlay(ip=ip, ifname=link.name, ifindex=link.index, mtu=link.mtu)
    raise ConfigError("no default route with a usable address: configure public_ip or public_interface")


def _first_global_ip(addresses: Sequence[Address], ifindex: int, version: int) -> IPAddress | None:
    # The kernel lists a link's primary address before its secondaries.
    for address in addresses:
        ip = address.interface.ip
        if address.ifindex == ifindex and ip.version == version and address.scope == _RT_SCOPE_UNIVERSE:
            return ip
    return None


def detect_underlay(ipr: Any, *, public_ip: IPAddress | None = None, interface: str | None = None) -> Underlay:
    """Detect the underlay in the namespace `ipr` serves (raises ConfigError or KernelError)."""
    nl = Netlink(ipr)
    routes: list[Route] = []
    if public_ip is None and interface is None:
        routes = nl.main_routes(4) + nl.main_routes(6)
    return choose_underlay(nl.links(), nl.addresses(), routes, public_ip=public_ip, interface=interface)

