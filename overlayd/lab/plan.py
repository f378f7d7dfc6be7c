"""The lab's address and name plan (pure): which namespaces, addresses, files.

Everything the lab creates is named from the lab name, so `lab down` can find
it all again and two labs never collide. Address plan (DESIGN.md): the
underlay is 198.18.0.0/24 on a bridge in a namespace of its own, etcd is
198.18.0.2 and host i is 198.18.0.(10+i).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from overlayd.config import WIREGUARD_IMPLEMENTATIONS
from overlayd.errors import UsageError

UNDERLAY = ipaddress.ip_network("198.18.0.0/24")
UNDERLAY_GATEWAY = ipaddress.ip_address("198.18.0.1")
ETCD_IP = ipaddress.ip_address("198.18.0.2")
# The simulated internet beyond the underlay gateway: routed by the underlay namespace, and
# knowing no route to any pod network (so only masqueraded pod traffic gets answers).
OUTSIDE_LINK = ipaddress.ip_network("198.19.0.0/30")  # underlay .1, outside .2
OUTSIDE_IP = ipaddress.ip_address("198.19.1.1")  # an "internet" address in the outside namespace
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
MAX_HOSTS = 200
DEFAULT_BASE_DIR = Path("/run/overlayd-lab")
PROBE_PORT = 7777
# host-gw works because every lab host sits on the one underlay bridge (one L2 segment).
BACKENDS = ("vxlan", "wireguard", "host-gw")

# The name prefixes every netns, so keep it short and shell-safe.
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")


@dataclass(frozen=True)
class LabHost:
    index: int
    name: str  # node name, e.g. h1
    netns: str
    underlay_ip: ipaddress.IPv4Address
    underlay_port: str  # the veth end on the underlay bridge
    dir: Path

    @property
    def socket(self) -> Path:
        return self.dir / "overlayd.sock"

    @property
    def config_path(self) -> Path:
        return self.dir / "overlayd.toml"

    @property
    def log_path(self) -> Path:
        return self.dir / "overlayd.log"

    @property
    def pod_netns_prefix(self) -> str:
        return f"{self.netns}-"

    @property
    def pod_name(self) -> str:
        return f"pod{self.index}"


@dataclass(frozen=True)
class LabPlan:
    name: str
    backend: str
    hosts: tuple[LabHost, ...]
    dir: Path
    wireguard_implementation: str = "auto"  # the daemons' [wireguard] implementation

    @property
    def underlay_netns(self) -> str:
        return f"{self.name}-ul"

    @property
    def outside_netns(self) -> str:
        return f"{self.name}-out"

    @property
    def etcd_endpoint(self) -> str:
        return f"http://{ETCD_IP}:{ETCD_CLIENT_PORT}"

    @property
    def etcd_dir(self) -> Path:
        return self.dir / "etcd"

    @property
    def state_path(self) -> Path:
        return self.dir / "lab.json"

    @property
    def netns_names(self) -> list[str]:
        return [self.underlay_netns, self.outside_netns] + [h.netns for h in self.hosts]


def validate_lab_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise UsageError(f"lab name {name!r}: 1-12 chars, lowercase letter first, then a-z 0-9")
    return name


def make_plan(name: str, hosts: int, backend: str, base_dir: Path = DEFAULT_BASE_DIR, *,
              wireguard_implementation: str = "auto") -> LabPlan:
    validate_lab_name(name)
    if not 1 <= hosts <= MAX_HOSTS:
        raise UsageError(f"--hosts {hosts}: between 1 and {MAX_HOSTS}")
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: one of {', '.join(BACKENDS)}")
    if wireguard_implementation not in WIREGUARD_IMPLEMENTATIONS:
        raise UsageError(f"--wireguard-implementation {wireguard_implementation!r}: one of "
                         f"{', '.join(WIREGUARD_IMPLEMENTATIONS)}")
    lab_dir = base_dir / name
    return LabPlan(
        name=name,
        backend=backend,
        wireguard_implementation=wireguard_implementation,
        dir=lab_dir,
        hosts=tuple(
            LabHost(
                index=i,
                name=f"h{i}",
                netns=f"{name}-h{i}",
                underlay_ip=UNDERLAY.network_address + 10 + i,
                underlay_port=f"h{i}",
                dir=lab_dir / f"h{i}",
            )
            for i in range(1, hosts + 1)
        ),
    )


def daemon_config_toml(plan: LabPlan, host: LabHost, lease_ttl: int) -> str:
    """The overlayd config for one simulated host: every global name made unique."""
    return "\n".join([
        f'node_name = "{host.name}"',
        f'netns = "{host.netns}"',
        f'state_dir = "{host.dir / "state"}"',
        f'run_dir = "{host.dir / "run"}"',
        f'socket_path = "{host.socket}"',
        f'netns_prefix = "{host.pod_netns_prefix}"',
        'public_interface = "eth0"',
        f"lease_ttl = {lease_ttl}",
        "",
        "[etcd]",
        f'endpoints = ["{plan.etcd_endpoint}"]',
        "",
        "[wireguard]",
        # Per host: every lab host names its interface alike, and UAPI sockets are global files
        # (wireguard-go too: overlayd binds this dir over its fixed /var/run/wireguard).
        f'socket_dir = "{host.dir / "wg"}"',
        f'implementation = "{plan.wireguard_implementation}"',
        "",
    ])
