"""The ipam exception hierarchy.

ipam is a library of its own (it does not import overlayd), so it has its own base class;
the daemon catches IpamError where it meets the library.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network


class IpamError(Exception):
    """Base of every error ipam raises deliberately."""


class InvalidConfig(IpamError):
    """A cluster config (usually read from etcd) is malformed or out of bounds.

    `field` names the offending field in dotted form ("subnet_len", "backend.vni",
    "backend.options.mtu"), or is None when the document as a whole is unusable.
    """

    def __init__(self, field: str | None, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


class InvalidState(IpamError):
    """A persisted address-pool state does not describe a consistent pool."""


class SubnetMismatch(InvalidState):
    """The state is well formed but belongs to another subnet (the host got a new lease)."""

    def __init__(self, state_subnet: str, pool_subnet: IPv4Network | IPv6Network) -> None:
        self.state_subnet = state_subnet
        self.pool_subnet = pool_subnet
        super().__init__(f"pool state is for subnet {state_subnet}, not {pool_subnet}")


class OutOfSubnets(IpamError):
    """Every host subnet of the cluster network is taken."""

    def __init__(self, network: IPv4Network | IPv6Network, subnet_len: int, total: int) -> None:
        self.network = network
        self.subnet_len = subnet_len
        self.total = total
        super().__init__(f"no free /{subnet_len} subnet left in {network}: all {total} are taken")


class OutOfAddresses(IpamError):
    """Every pod address of a host subnet is allocated."""

    def __init__(self, subnet: IPv4Network | IPv6Network, capacity: int) -> None:
        self.subnet = subnet
        self.capacity = capacity
        super().__init__(f"no free address left in {subnet}: all {capacity} pod addresses are allocated")
