"""How pods are wired on this host: bridge, names, paths, MTU, gateway (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path

from overlayd.errors import ConfigError, UsageError
from overlayd.pods.names import IFNAME_MAX, validate_link_prefix, validate_pod_name, veth_name

_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_NETNS_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,32}")


@dataclass(frozen=True, kw_only=True)
class PodNetworkConfig:
    bridge: str  # the host bridge pods attach to (the backend creates it)
    gateway: IPv4Address | IPv6Address  # the bridge's address, the pods' default route
    prefixlen: int  # of the host's pod subnet
    link_prefix: str = "ovl"  # host veth = link_prefix + 8 hex digits
    netns_dir: Path = Path("/run/netns")  # where `ip netns` looks
    netns_prefix: str = "ovl-"  # net namespace file = netns_dir / (netns_prefix + pod name)
    pod_run_dir: Path = Path("/run/overlayd/pods")  # uts and ipc files: pod_run_dir / name / {uts,ipc}
    mtu: int = 1450
    etc_netns_dir: Path = Path("/etc/netns")  # per-namespace /etc files, where `ip netns exec` looks
    resolv_conf: str | None = None  # every pod's resolv.conf (pods/dns.py); None: write none

    def __post_init__(self) -> None:
        if not (0 < len(self.bridge) <= IFNAME_MAX and _IFNAME.fullmatch(self.bridge)):
            raise ConfigError(f"bridge {self.bridge!r} is not a valid interface name")
        try:
            validate_link_prefix(self.link_prefix)
        except UsageError as exc:
            raise ConfigError(str(exc)) from None
        # Non-empty: namespace files with this prefix are ours to reconcile and delete.
        if not _NETNS_PREFIX.fullmatch(self.netns_prefix):
            raise ConfigError(f"netns prefix {self.netns_prefix!r}: 1..32 of letters, digits, '_', '.', '-'")
        if not isinstance(self.gateway, (IPv4Address, IPv6Address)):
            object.__setattr__(self, "gateway", _parse_gateway(self.gateway))
        object.__setattr__(self, "netns_dir", Path(self.netns_dir))
        object.__setattr__(self, "pod_run_dir", Path(self.pod_run_dir))
        object.__setattr__(self, "etc_netns_dir", Path(self.etc_netns_dir))
        if not 1 <= self.prefixlen <= self.gateway.max_prefixlen:
            raise ConfigError(f"prefix length {self.prefixlen} is invalid for {self.gateway}")
        if not 68 <= self.mtu <= 65535:
            raise ConfigError(f"mtu {self.mtu} out of range 68..65535")

    def pod_subnet_contains(self, ip: IPv4Address | IPv6Address) -> bool:
        """Whether `ip` is a usable pod address on the gateway's subnet (not the gateway, network or broadcast)."""
        if ip.version != self.gateway.version:
            return False
        subnet = ip_network(f"{self.gateway}/{self.prefixlen}", strict=False)
        reserved = {self.gateway, subnet.network_address}
        if ip.version == 4:
            reserved.add(subnet.broadcast_address)
        return ip in subnet and ip not in reserved


def _parse_gateway(value: object) -> IPv4Address | IPv6Address:
    try:
        return ip_address(value)  # type: ignore[arg-type]
    except ValueError:
        raise ConfigError(f"gateway {value!r} is not an IP address") from None


@dataclass(frozen=True)
class PodNamespaces:
    """Where a pod's namespaces live and what its host-side veth is called."""

    name: str
    netns_name: str  # for `ip netns exec NAME`
    net: Path
    uts: Path
    ipc: Path
    host_veth: str
    resolv_conf: Path  # shown to the pod's processes as /etc/resolv.conf

    @property
    def pod_dir(self) -> Path:
        return self.uts.parent

    def to_dict(self) -> dict[str, str]:
        return {"net": str(self.net), "uts": str(self.uts), "ipc": str(self.ipc), "resolv_conf": str(self.resolv_conf)}


def pod_paths(config: PodNetworkConfig, name: str) -> PodNamespaces:
    """Where pod `name` lives under `config` (pure)."""
    validate_pod_name(name)
    netns_name = config.netns_prefix + name
    pod_dir = config.pod_run_dir / name
    return PodNamespaces(
        name=name,
        netns_name=netns_name,
        net=config.netns_dir / netns_name,
        uts=pod_dir / "uts",
        ipc=pod_dir / "ipc",
        host_veth=veth_name(config.link_prefix, name),
        resolv_conf=config.etc_netns_dir / netns_name / "resolv.conf",
    )
