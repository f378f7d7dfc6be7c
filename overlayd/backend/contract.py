"""What every backend is to the daemon (flannel's Backend/Network, in one Protocol).

A backend programs the paths to other hosts. It declares its type and MTU overhead,
the data it publishes in this host's record, how a peer's record is parsed
(`peer_from_record_untrusted`), and converges the kernel: `setup(own_subnet)` once,
then `reconcile(peers)` with the complete desired peer set, as often as it likes.
Optional observations (handshakes, transfer counters, drops) come from `observe()`.

The daemon sees only this module and registry.py: adding a backend is one module
with a `from_context` factory plus one line in registry.BACKENDS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Hashable, Protocol

from overlayd.cluster.records import HostRecord
from overlayd.errors import ConfigError

from .objects import IPAddress, IPNetwork
from .underlay import Underlay

# overlayd_dropped_records_total{reason}: a record that is fine but does not fit this backend.
BACKEND_MISMATCH = "backend_mismatch"


class BackendPeer(Protocol):
    """One remote host as a backend sees it. `identity` is what no two hosts may share
    (VTEP MAC, WireGuard public key, ...): peers.screen_peers keeps the oldest claimant."""

    @property
    def public_ip(self) -> IPAddress: ...
    @property
    def create_revision(self) -> int: ...
    @property
    def identity(self) -> Hashable: ...


@dataclass(frozen=True)
class Refusal:
    """A peer not programmed, and why (a conflict a broken or hostile record would cause)."""

    subnet: IPNetwork
    reason: str


@dataclass(frozen=True)
class ReconcileResult:
    """Kernel objects touched by one reconcile run, and the peers refused."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    refused: tuple[Refusal, ...] = ()


@dataclass(frozen=True)
class PeerObservation:
    """What the data path reports about one peer (None: the backend cannot tell)."""

    endpoint: str | None = None
    latest_handshake: float | None = None  # Unix time
    rx_bytes: int | None = None
    tx_bytes: int | None = None


@dataclass(frozen=True)
class Observations:
    """Optional data-path observations, polled by the daemon."""

    peers: Mapping[IPAddress, PeerObservation] = field(default_factory=dict)  # by the peer's public IP
    handshakes: Mapping[Hashable, float | None] = field(default_factory=dict)  # peer identity -> latest
    drops: Mapping[str, int] | None = None  # reason -> count, for backends that count their drops


@dataclass(frozen=True)
class BackendContext:
    """Everything a backend factory may use: the daemon builds it, the backend picks."""

    ipr: Any  # pyroute2 IPRoute in the host's network namespace
    node: str  # this host's node name (host-gw's peer identity)
    underlay: Underlay
    vtep_mac: str  # this host's persisted VXLAN MAC
    port: int | None  # from the cluster config (None: the type has no port, e.g. host-gw)
    vni: int | None
    options: Mapping[str, Any]  # the cluster config's backend options
    link_prefix: str
    state_dir: Path
    run_dir: Path
    mtu: int | None  # the operator's override
    wireguard_implementation: str
    wireguard_socket_dir: Path | None
    wireguard_workers: int = 1


def port_of(ctx: BackendContext) -> int:
    """The port of a backend type that has one (the cluster config always gives it one)."""
    if ctx.port is None:
        raise ConfigError("the cluster config names no port for this backend")
    return ctx.port


class Backend(Protocol):
    type: ClassVar[str]
    overhead: ClassVar[int]  # bytes of encapsulation per packet (for an IPv6 underlay)
    observes: ClassVar[bool]  # True: observe() reports something worth polling

    @property
    def mtu(self) -> int: ...
    def backend_data(self) -> dict[str, str]: ...
    def peer_from_record_untrusted(self, record: HostRecord, create_revision: int = 0) -> BackendPeer:
        """RecordError(reason=BACKEND_MISMATCH) if the record is no peer this backend can program."""
        ...
    def setup(self, own_subnet: IPNetwork) -> None: ...
    def reconcile(self, peers: Mapping[IPNetwork, Any], *, full: bool = False) -> ReconcileResult:
        """Make the kernel carry exactly `peers`. full: read the kernel and repair whatever
        differs (start-up, the periodic resync); otherwise a backend may plan from what it
        last programmed, which keeps one event cheap among thousands of peers."""
        ...
    def observe(self) -> Observations: ...
