"""Host setup: the pod bridge with the subnet's gateway address, and IP forwarding.

Idempotent: a matching bridge is adopted as is; MTU, state and addresses are fixed
where they differ; our stale addresses (say, the gateway of a previous subnet) go.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlayd.errors import KernelError

from .addresses import converge_addresses
from .mac import gateway_mac
from .netlink import Netlink
from .objects import RTPROT_OVERLAYD, IPInterface, IPNetwork, Link

log = logging.getLogger(__name__)

PROC_SYS = Path("/proc/sys")


@dataclass(frozen=True)
class HostNetwork:
    bridge: str
    ifindex: int
    gateway: IPInterface  # e.g. 10.244.3.1/24: the pods' default gateway
    mtu: int


def gateway_of(subnet: IPNetwork) -> IPInterface:
    """The subnet's first host address with the subnet's prefix length (as in the IPAM pool)."""
    return ipaddress.ip_interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")


def ensure_host_network(
    ipr: Any,
    *,
    bridge: str,
    subnet: IPNetwork,
    mtu: int,
    protocol: int = RTPROT_OVERLAYD,
    sysctl_dir: Path = PROC_SYS,
) -> HostNetwork:
    """Converge bridge, gateway address and forwarding for `subnet` (KernelError on failure).

    Forwarding is switched on through `sysctl_dir`; /proc/sys/net belongs to the network
    namespace of the thread that opens it, so call this from a thread in the host's netns.
    """
    nl = Netlink(ipr)
    gateway = gateway_of(subnet)
    link = ensure_bridge(nl, bridge, mtu, mac=gateway_mac(gateway.ip), ipv6=subnet.version == 6,
                         sysctl_dir=sysctl_dir)
    plan = converge_addresses(nl, link.index, {gateway}, protocol)
    for address in plan.remove:
        log.info("removed stale address %s from %s", address.interface, bridge)
    enable_forwarding(4, sysctl_dir)
    if subnet.version == 6:
        enable_forwarding(6, sysctl_dir)
    return HostNetwork(bridge=bridge, ifindex=link.index, gateway=gateway, mtu=mtu)


def ensure_bridge(nl: Netlink, name: str, mtu: int, *, mac: str, ipv6: bool, sysctl_dir: Path = PROC_SYS) -> Link:
    link = nl.link(name)
    if link is not None and link.kind != "bridge":
        log.warning("link %s is a %s, not a bridge: recreating it", name, link.kind or "physical link")
        nl.delete_link(link)
        link = None
    if link is None:
        # The MAC is set explicitly: otherwise the bridge takes the lowest port MAC and changes it
        # whenever that pod goes, breaking every pod's cached gateway entry. A live bridge keeps
        # whatever MAC it has, for the same reason.
        link = nl.create_link(name, "bridge", address=mac, mtu=mtu)
        log.info("created bridge %s", name)
    if ipv6:
        # Before the link comes up: without DAD on its link-local address the bridge can send
        # neighbour solicitations to the first pod at once instead of ~2 s later.
        ensure_sysctl(sysctl_dir / f"net/ipv6/conf/{name}/accept_dad", "0")
    changes: dict[str, Any] = {}
    if link.mtu != mtu:
        changes["mtu"] = mtu
    if not link.up:
        changes["state"] = "up"
    if changes:
        nl.set_link(link, **changes)
    return link


def enable_forwarding(version: int, sysctl_dir: Path = PROC_SYS) -> bool:
    """Switch on IPv4 or IPv6 forwarding; True if it was off."""
    path = sysctl_dir / ("net/ipv4/ip_forward" if version == 4 else "net/ipv6/conf/all/forwarding")
    changed = ensure_sysctl(path, "1")
    if changed:
        log.info("enabled IPv%d forwarding", version)
    return changed


def ensure_sysctl(path: Path, value: str) -> bool:
    """Write `value` to a sysctl file unless it already holds it; True if written."""
    try:
        if path.read_text().strip() == value:
            return False
        path.write_text(f"{value}\n")
    except OSError as exc:
        raise KernelError(f"set {path} to {value}: {exc.strerror or exc}") from exc
    return True
