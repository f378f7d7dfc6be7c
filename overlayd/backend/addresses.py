"""Converge the addresses of one link we own: add the wanted ones, remove our stale ones.

Only addresses carrying our protocol mark (IFA_PROTO, Linux >= 6.1) are removed, so an
address an admin put on our bridge survives; kernel link-local addresses are never ours.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from .netlink import Netlink
from .objects import Address, IPInterface


@dataclass(frozen=True)
class AddressPlan:
    remove: tuple[Address, ...]
    add: tuple[IPInterface, ...]


def plan_addresses(want: Collection[IPInterface], have: Sequence[Address], protocol: int) -> AddressPlan:
    present = {a.interface for a in have}
    return AddressPlan(
        remove=tuple(a for a in have if a.protocol == protocol and a.interface not in want),
        add=tuple(sorted((w for w in want if w not in present), key=str)),
    )


def converge_addresses(nl: Netlink, ifindex: int, want: Collection[IPInterface], protocol: int) -> AddressPlan:
    """Make link `ifindex` carry `want`; returns what was done."""
    plan = plan_addresses(want, nl.addresses(ifindex), protocol)
    # Removals first: IPv6 refuses a second copy of an address with another prefix length.
    for address in plan.remove:
        nl.delete_address(address)
    for interface in plan.add:
        nl.add_address(ifindex, interface, protocol)
    return plan
