"""What the kernel still knows of this host after its state files were lost (pure + one read).

The bridge carries the gateway address of the host's subnet, marked with our address
protocol, and the VXLAN device carries the VTEP MAC that peers have in their FDB and
neighbour tables. Both outlive the daemon, so a host whose host.json was truncated keeps
its subnet and MAC instead of taking new ones (which would cut its pods off).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .netlink import Netlink
from .objects import RTPROT_OVERLAYD, Address, IPNetwork


@dataclass(frozen=True)
class Recalled:
    subnet: IPNetwork | None  # None: no bridge, or not exactly one address of ours on it
    vtep_mac: str | None  # None: no VXLAN device of that name


def subnet_of_bridge(addresses: Sequence[Address], protocol: int = RTPROT_OVERLAYD) -> IPNetwork | None:
    """The subnet whose gateway address we put on the bridge; None unless exactly one is there."""
    ours = {a.interface.network for a in addresses if a.protocol == protocol}
    return ours.pop() if len(ours) == 1 else None


def recall_host(ipr: Any, *, bridge: str, vxlan_device: str) -> Recalled:
    nl = Netlink(ipr)
    link = nl.link(bridge)
    subnet = subnet_of_bridge(nl.addresses(link.index)) if link is not None and link.kind == "bridge" else None
    vxlan = nl.link(vxlan_device)
    return Recalled(subnet, vxlan.mac if vxlan is not None and vxlan.kind == "vxlan" else None)
