"""ipam: pure address management for overlayd (no I/O of its own).

- config: the cluster-wide network config and its untrusted-JSON parser.
- subnets: choosing the subnet a host leases.
- pool: pod addresses inside one host subnet.
"""

from ipam.config import BackendConfig, ClusterConfig
from ipam.errors import (
    InvalidConfig,
    InvalidState,
    IpamError,
    OutOfAddresses,
    OutOfSubnets,
    SubnetMismatch,
)
from ipam.pool import AddressPool
from ipam.subnets import choose_subnet

__all__ = [
    "AddressPool",
    "BackendConfig",
    "ClusterConfig",
    "InvalidConfig",
    "InvalidState",
    "IpamError",
    "OutOfAddresses",
    "OutOfSubnets",
    "SubnetMismatch",
    "choose_subnet",
]
