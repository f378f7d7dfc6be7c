"""The WireGuard backend: one WireGuard interface, one peer per remote host.

Each peer's allowed IPs are its pod subnet and its endpoint is its public IP
and port from etcd, so WireGuard's cryptokey routing does the rest: a route
per remote subnet points at the interface, and the interface picks the peer.

The interface is the kernel's (configured over generic netlink with pyroute2),
our userspace engine `overlayd-wg` or the stock `wireguard-go` (both configured
over their UAPI socket). A userspace engine runs as a process of its own, so the
data path survives restarts of the daemon; a restarted daemon adopts the running
engine instead of replacing it.

Pure planning (what to change) is apart from I/O (talking to the device).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from overlayd.cluster.records import HostRecord
from overlayd.errors import ConfigError, KernelError, NotFoundError, OverlaydError, UsageError

from .addresses import converge_addresses
from .contract import BackendContext, port_of, Observations, PeerObservation, ReconcileResult, Refusal
from .netlink import Netlink
from .objects import RTPROT_OVERLAYD, IPAddress, IPNetwork, Route
from .overlap import foreign_route_conflicts
from .peers import mismatch, screen_peers
from .vxlan_plan import device_address

if TYPE_CHECKING:  # wgkeys loads `cryptography`; only a WireGuard daemon needs it
    from .wgkeys import KeyPair

log = logging.getLogger(__name__)

# IPv4 (20) + UDP (8) + WireGuard header (16) + tag (16) = 60, rounded up for
# an IPv6 underlay (+20): the usual WireGuard figure.
WIREGUARD_OVERHEAD = 80
# auto: the kernel module when present, else our engine; userspace: our engine `overlayd-wg`.
IMPLEMENTATIONS = ("auto", "kernel", "userspace", "wireguard-go")
ENGINE_READY_TIMEOUT = 10.0  # seconds for a started userspace engine to answer on its UAPI socket
# wireguard-go has no option for its socket dir (always /var/run/wireguard). For another
# dir it runs in a mount namespace of its own with that dir bound over /run/wireguard:
# it creates, watches and removes its socket there as usual. (/var/run is /run on Debian.)
_WIREGUARD_GO_IN_DIR = 'mkdir -p /run/wireguard && mount --bind "$0" /run/wireguard && exec wireguard-go -f "$1"'
# sd_notify's variables (sd_notify(3)): only the daemon talks to systemd.
_SYSTEMD_NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@dataclass(frozen=True)
class WgPeer:
    public_key: bytes
    endpoint_ip: IPAddress
    port: int
    create_revision: int = 0  # etcd create revision of the peer's key: its age (0: unknown)

    @property
    def public_ip(self) -> IPAddress:
        return self.endpoint_ip

    @property
    def identity(self) -> bytes:
        return self.public_key

    @classmethod
    def from_backend_data_untrusted(cls, public_ip: IPAddress, backend: Mapping[str, object],
                                    create_revision: int = 0) -> WgPeer:
        if backend.get("type") != "wireguard":
            raise mismatch(public_ip, f"backend type {backend.get('type')!r}, expected 'wireguard'")
        try:
            key = base64.b64decode(str(backend.get("public_key", "")), validate=True)
            port = int(str(backend.get("port", "")))
        except (binascii.Error, ValueError):
            raise mismatch(public_ip, "bad WireGuard public key or port") from None
        if len(key) != 32 or not 1 <= port <= 65535:
            raise mismatch(public_ip, "bad WireGuard public key or port")
        return cls(public_key=key, endpoint_ip=public_ip, port=port, create_revision=create_revision)


@dataclass(frozen=True)
class PeerStats:
    public_key: bytes
    endpoint: str | None
    latest_handshake: float | None  # Unix time
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class PeerChange:
    subnet: IPNetwork
    peer: WgPeer
    set_endpoint: bool  # False: keep the endpoint the peer roamed to


@dataclass(frozen=True)
class DevicePlan:
    """What to tell the device: peers to (re)configure and peers to remove."""

    upsert: tuple[PeerChange, ...]
    remove: tuple[bytes, ...]

    def __bool__(self) -> bool:
        return bool(self.upsert or self.remove)


def plan_device(desired: Mapping[IPNetwork, WgPeer], current: Mapping[bytes, tuple[str | None, tuple[IPNetwork, ...]]],
                 applied: Mapping[bytes, str]) -> DevicePlan:
    """current: public key -> (endpoint "ip:port" or None, allowed IPs) as the device reports them;
    applied: the endpoint we last set for each key.

    An endpoint is set only when the peer is new or its record's endpoint changed
    since we last set it: WireGuard roams a peer to wherever its authenticated
    packets come from, and a periodic resync must not undo that.
    """
    upsert = []
    wanted_keys = set()
    for subnet, peer in sorted(desired.items(), key=lambda item: str(item[0])):
        wanted_keys.add(peer.public_key)
        have = current.get(peer.public_key)
        set_endpoint = have is None or applied.get(peer.public_key) != _endpoint_text(peer)
        if set_endpoint or have is None or have[1] != (subnet,):
            upsert.append(PeerChange(subnet, peer, set_endpoint))
    remove = tuple(sorted(key for key in current if key not in wanted_keys))
    return DevicePlan(upsert=tuple(upsert), remove=remove)


def plan_routes(desired: set[IPNetwork], routes: list[Route], ifindex: int, protocol: int
                ) -> tuple[list[IPNetwork], list[Route]]:
    """Routes to add (dst dev wg) and our routes to delete (anything of ours not wanted)."""
    ours = [r for r in routes if r.protocol == protocol]
    good = {r.dst for r in ours if r.oif == ifindex and r.gateway is None}
    add = sorted((d for d in desired if d not in good), key=str)
    delete = [r for r in ours if r.dst not in desired or r.oif != ifindex or r.gateway is not None]
    return add, delete


def _endpoint_text(peer: WgPeer) -> str:
    host = f"[{peer.endpoint_ip}]" if peer.endpoint_ip.version == 6 else str(peer.endpoint_ip)
    return f"{host}:{peer.port}"


class DeviceControl(Protocol):
    """Configure and read one WireGuard interface (kernel or userspace)."""

    def configure(self, private_key: bytes, listen_port: int) -> None: ...
    def peers(self) -> list[PeerStats | Any]: ...
    def current(self) -> dict[bytes, tuple[str | None, tuple[IPNetwork, ...]]]: ...
    def apply(self, plan: DevicePlan) -> None: ...


class UapiControl:
    """Our userspace engine (or wireguard-go) over the UAPI socket.

    overlayd.wireguard is imported only here, when the WireGuard backend is in
    use, so a VXLAN daemon does not pay for loading the protocol core.
    """

    def __init__(self, ifname: str, socket_dir: Path | None) -> None:
        from overlayd.wireguard.uapi_server import UapiClient

        self.client = UapiClient(ifname, socket_dir)

    def configure(self, private_key: bytes, listen_port: int) -> None:
        from overlayd.wireguard.uapi import SetRequest

        # Send only what differs: wireguard-go closes and reopens its sockets on any
        # listen_port, even the same one, and a datagram arriving then is lost.
        state = self._state()
        key = None if state.private_key == private_key else private_key
        port = None if state.listen_port == listen_port else listen_port
        if key is not None or port is not None:
            self.client.set(SetRequest(private_key=key, listen_port=port))

    def _state(self) -> Any:
        return self.client.get()

    def current(self) -> dict[bytes, tuple[str | None, tuple[IPNetwork, ...]]]:
        from overlayd.wireguard.uapi import format_endpoint

        return {p.public_key: (format_endpoint(p.endpoint) if p.endpoint else None, tuple(p.allowed_ips))
                for p in self._state().peers}

    def peers(self) -> list[PeerStats]:
        from overlayd.wireguard.uapi import format_endpoint

        return [PeerStats(public_key=p.public_key,
                          endpoint=format_endpoint(p.endpoint) if p.endpoint else None,
                          latest_handshake=p.last_handshake_ns / 1e9 if p.last_handshake_ns else None,
                          rx_bytes=p.rx_bytes, tx_bytes=p.tx_bytes)
                for p in self._state().peers]

    def apply(self, plan: DevicePlan) -> None:
        from overlayd.wireguard.uapi import PeerUpdate, SetRequest, parse_endpoint_untrusted

        updates = [PeerUpdate(public_key=key, remove=True) for key in plan.remove]
        updates += [PeerUpdate(public_key=c.peer.public_key,
                               endpoint=parse_endpoint_untrusted(_endpoint_text(c.peer)) if c.set_endpoint else None,
                               replace_allowed_ips=True, allowed_ips=(c.subnet,))
                    for c in plan.upsert]
        self.client.set(SetRequest(peers=tuple(updates)))


class KernelControl:
    """The kernel module over generic netlink (pyroute2). Not exercised on the
    build machine, which has no WireGuard module; kept small on purpose."""

    def __init__(self, ifname: str) -> None:
        from pyroute2 import WireGuard

        self.ifname = ifname
        self.wg = WireGuard()

    def configure(self, private_key: bytes, listen_port: int) -> None:
        self.wg.set(self.ifname, private_key=base64.b64encode(private_key).decode(), listen_port=listen_port)

    def _kernel_peers(self) -> list[dict[str, Any]]:
        peers = []
        for msg in self.wg.info(self.ifname):
            for peer in msg.get_attr("WGDEVICE_A_PEERS") or []:
                allowed = [ip_network(f"{a.get_attr('WGALLOWEDIP_A_IPADDR')}/{a.get_attr('WGALLOWEDIP_A_CIDR_MASK')}")
                           for a in peer.get_attr("WGPEER_A_ALLOWEDIPS") or []]
                endpoint = peer.get_attr("WGPEER_A_ENDPOINT")
                handshake = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
                peers.append({
                    "key": base64.b64decode(peer.get_attr("WGPEER_A_PUBLIC_KEY")),
                    "endpoint": f"{endpoint['addr']}:{endpoint['port']}" if endpoint else None,
                    "allowed": tuple(allowed),
                    "handshake": handshake.get("tv_sec") or None,
                    "rx": peer.get_attr("WGPEER_A_RX_BYTES") or 0,
                    "tx": peer.get_attr("WGPEER_A_TX_BYTES") or 0,
                })
        return peers

    def current(self) -> dict[bytes, tuple[str | None, tuple[IPNetwork, ...]]]:
        return {p["key"]: (p["endpoint"], p["allowed"]) for p in self._kernel_peers()}

    def peers(self) -> list[PeerStats]:
        return [PeerStats(p["key"], p["endpoint"], p["handshake"], p["rx"], p["tx"]) for p in self._kernel_peers()]

    def apply(self, plan: DevicePlan) -> None:
        for key in plan.remove:
            self.wg.set(self.ifname, peer={"public_key": base64.b64encode(key).decode(), "remove": True})
        for change in plan.upsert:
            peer: dict[str, Any] = {"public_key": base64.b64encode(change.peer.public_key).decode(),
                                    "allowed_ips": [str(change.subnet)], "replace_allowed_ips": True}
            if change.set_endpoint:
                peer |= {"endpoint_addr": str(change.peer.endpoint_ip), "endpoint_port": change.peer.port}
            self.wg.set(self.ifname, peer=peer)


def drops_from_engine_counters(counters: Mapping[str, int]) -> dict[str, int]:
    """The drop counts in the engine's counters (keys drop_<reason>) keyed by reason."""
    return {key[len("drop_"):]: value for key, value in counters.items() if key.startswith("drop_")}


def from_context(ctx: BackendContext) -> WireGuardBackend:
    """The registry's factory (registry.py)."""
    from . import wgkeys  # loads `cryptography`, which a VXLAN daemon does without

    keys = wgkeys.load_or_create(ctx.state_dir / "wireguard.key")
    return WireGuardBackend(ctx.ipr, f"{ctx.link_prefix}.wg", keys, port_of(ctx),
                            ctx.mtu or ctx.underlay.mtu - WIREGUARD_OVERHEAD, local_ip=ctx.underlay.ip,
                            implementation=ctx.wireguard_implementation, socket_dir=ctx.wireguard_socket_dir,
                            workers=ctx.wireguard_workers)


class WireGuardBackend:
    type = "wireguard"
    overhead = WIREGUARD_OVERHEAD
    observes = True  # handshakes, transfer counters, and the userspace engine's drops

    def __init__(self, ipr: Any, device: str, keys: KeyPair, listen_port: int, mtu: int, *,
                 local_ip: IPAddress, implementation: str = "auto", socket_dir: Path | None = None,
                 workers: int = 1, route_protocol: int = RTPROT_OVERLAYD) -> None:
        if implementation not in IMPLEMENTATIONS:
            raise ConfigError(f"wireguard implementation {implementation!r}: one of {', '.join(IMPLEMENTATIONS)}")
        self._nl = Netlink(ipr)
        self.device = device
        self.keys = keys
        self.listen_port = listen_port
        self._mtu = mtu
        self.local_ip = local_ip  # our public IP: a peer claiming it is refused
        self.implementation = implementation
        self.socket_dir = socket_dir
        self.workers = workers  # of our userspace engine
        self.route_protocol = route_protocol
        self.control: DeviceControl | None = None
        self.kind: str | None = None  # "kernel", "userspace" or "wireguard-go", once set up
        self._own_subnet: IPNetwork | None = None
        self._applied_endpoints: dict[bytes, str] = {}
        self._programmed: dict[bytes, WgPeer] = {}  # public key -> peer, as last reconciled

    @property
    def mtu(self) -> int:
        return self._mtu

    def backend_data(self) -> dict[str, str]:
        return {"type": "wireguard", "public_key": self.keys.public_b64, "port": str(self.listen_port)}

    def peer_from_record_untrusted(self, record: HostRecord, create_revision: int = 0) -> WgPeer:
        return WgPeer.from_backend_data_untrusted(record.public_ip, record.backend, create_revision)

    # --- device ---------------------------------------------------------------

    def setup(self, own_subnet: IPNetwork) -> None:
        """Adopt or create the interface, set key and port, address and MTU."""
        self._own_subnet = own_subnet
        link = self._nl.link(self.device)
        if link is not None and link.kind == "wireguard":
            self.kind, self.control = "kernel", KernelControl(self.device)
        elif link is not None and self._engine_answers():
            self.kind, self.control = self._running_engine(), UapiControl(self.device, self.socket_dir)
            log.info("adopted running %s WireGuard engine on %s", self.kind, self.device)
            if self.implementation in ("userspace", "wireguard-go") and self.kind != self.implementation:
                # Replacing it would cut every tunnel; switching is the operator's explicit step.
                log.warning("%s runs %s, not the configured %s: kept; delete the interface to switch",
                            self.device, self.kind, self.implementation)
        else:
            if link is not None:  # a stale interface whose engine died
                log.warning("removing %s: no WireGuard engine answers for it", self.device)
                self._nl.delete_link(link)
            self._create()
        assert self.control is not None
        self.control.configure(self.keys.private, self.listen_port)
        link = self._nl.link(self.device)
        if link is None:
            raise KernelError(f"WireGuard interface {self.device} vanished during setup")
        if link.mtu != self.mtu or not link.up:
            self._nl.set_link(link, mtu=self.mtu, state="up")
        converge_addresses(self._nl, link.index, {device_address(own_subnet)}, self.route_protocol)

    def _engine_answers(self) -> bool:
        from overlayd.wireguard.errors import UntrustedSocketError

        try:
            UapiControl(self.device, self.socket_dir).client.get()
        except UntrustedSocketError:
            raise  # someone else holds the engine's socket: neither adopt it nor delete the link
        except (OverlaydError, OSError):
            return False
        return True

    def _running_engine(self) -> str:
        """Which engine answers on the socket: only ours has counters."""
        try:
            UapiControl(self.device, self.socket_dir).client.counters()
        except (OverlaydError, OSError):
            return "wireguard-go"
        return "userspace"

    def _create(self) -> None:
        if self.implementation == "wireguard-go":
            self._start_wireguard_go()
            self.kind, self.control = "wireguard-go", UapiControl(self.device, self.socket_dir)
            return
        if self.implementation in ("auto", "kernel"):
            try:
                self._nl.create_link(self.device, "wireguard")
                self.kind, self.control = "kernel", KernelControl(self.device)
                log.info("created kernel WireGuard interface %s", self.device)
                return
            except KernelError as exc:
                if self.implementation == "kernel":
                    raise KernelError(f"kernel WireGuard unavailable ({exc}); "
                                      "set wireguard.implementation = \"userspace\" or \"auto\"") from None
                log.info("no kernel WireGuard (%s): starting the userspace engine", exc)
        self._start_engine()
        self.kind, self.control = "userspace", UapiControl(self.device, self.socket_dir)

    def _start_engine(self) -> None:
        cmd = [sys.executable, "-m", "overlayd.wireguard.cli", self.device, "--mtu", str(self.mtu)]
        if self.socket_dir is not None:
            cmd += ["--socket-dir", str(self.socket_dir)]
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
        self._spawn_engine(cmd, "userspace WireGuard engine")

    def _start_wireguard_go(self) -> None:
        if shutil.which("wireguard-go") is None:
            raise KernelError("wireguard.implementation = \"wireguard-go\" but no wireguard-go is installed "
                              "(Debian: apt install wireguard-go)")
        cmd = ["wireguard-go", "-f", self.device]  # -f: stay a child we can watch, no self-daemonising
        if self.socket_dir is not None:
            self.socket_dir.mkdir(parents=True, exist_ok=True)
            cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _WIREGUARD_GO_IN_DIR,
                   str(self.socket_dir), self.device]
        self._spawn_engine(cmd, "wireguard-go")

    def _spawn_engine(self, cmd: list[str], what: str) -> None:
        """Start a userspace engine and wait until it answers on its UAPI socket."""
        from overlayd.wireguard.errors import UntrustedSocketError
        from overlayd.wireguard.uapi_server import UapiClient

        # The engine logs to our stderr (the journal under systemd, rotated there), and must not
        # tell systemd READY=1 or feed the watchdog in our name: those variables are ours alone.
        env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_NOTIFY_ENV}
        # A session of its own: the engine must outlive this daemon's restarts.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        client = UapiClient(self.device, self.socket_dir)
        deadline = time.monotonic() + ENGINE_READY_TIMEOUT
        while True:
            try:
                client.get()
                break
            except UntrustedSocketError:
                proc.kill()
                proc.wait()
                raise
            except NotFoundError:
                if proc.poll() is not None or time.monotonic() >= deadline:
                    proc.kill()
                    proc.wait()
                    raise KernelError(f"{what} for {self.device} did not start; its reason is in this "
                                      "daemon's log (the engine writes to the same stderr)") from None
                time.sleep(0.05)
        log.info("started %s on %s (pid %d)", what, self.device, proc.pid)

    # --- peers ----------------------------------------------------------------

    def reconcile(self, peers: Mapping[IPNetwork, WgPeer], *, full: bool = False) -> ReconcileResult:
        if self.control is None or self._own_subnet is None:
            raise UsageError("WireGuardBackend.reconcile() called before setup()")
        link = self._nl.link(self.device)
        if link is None:  # the engine died and took the interface along: start over
            self.setup(self._own_subnet)
            link = self._nl.link(self.device)
            assert link is not None
        screened = screen_peers(peers, own_subnet=self._own_subnet, own_ip=self.local_ip,
                                own_identity=self.keys.public, identity_name="WireGuard public key")
        routes = self._nl.main_routes(self._own_subnet.version)
        taken = foreign_route_conflicts(screened.accepted, routes, ifindex=link.index, protocol=self.route_protocol)
        accepted = {subnet: peer for subnet, peer in screened.accepted.items() if subnet not in taken}
        refusals = [*screened.refused, *(Refusal(subnet, reason) for subnet, reason in taken.items())]
        for refusal in refusals:
            log.warning("refusing peer %s: %s", refusal.subnet, refusal.reason)
        current = self.control.current()
        plan = plan_device(accepted, current, self._applied_endpoints)
        if plan:
            self.control.apply(plan)
            for change in plan.upsert:
                if change.set_endpoint:
                    self._applied_endpoints[change.peer.public_key] = _endpoint_text(change.peer)
            for key in plan.remove:
                self._applied_endpoints.pop(key, None)
        self._programmed = {peer.public_key: peer for peer in accepted.values()}
        add, delete = plan_routes(set(accepted), routes, link.index, self.route_protocol)
        for route in delete:
            self._nl.delete_route(route)
        for dst in add:
            self._nl.replace_dev_route(dst, link.index, self.route_protocol)
        new = sum(1 for c in plan.upsert if c.peer.public_key not in current)
        return ReconcileResult(added=new + len(add), changed=len(plan.upsert) - new,
                               removed=len(plan.remove) + len(delete), refused=tuple(refusals))

    def observe(self) -> Observations:
        stats = self.peer_stats()
        counters = self.engine_counters()
        return Observations(
            peers={ip: PeerObservation(s.endpoint, s.latest_handshake, s.rx_bytes, s.tx_bytes)
                   for ip, s in self._stats_by_peer_ip(stats).items()},
            handshakes={key: s.latest_handshake for key, s in stats.items()},
            drops=drops_from_engine_counters(counters) if counters is not None else None)

    def _stats_by_peer_ip(self, stats: Mapping[bytes, PeerStats]) -> dict[IPAddress, PeerStats]:
        return {peer.endpoint_ip: stats[key] for key, peer in self._programmed.items() if key in stats}

    def engine_counters(self) -> dict[str, int] | None:
        """Our userspace engine's counters (drop_<reason>, ...); None for the kernel module and
        wireguard-go, which count nothing over UAPI."""
        if self.kind != "userspace" or not isinstance(self.control, UapiControl):
            return None
        try:
            return self.control.client.counters()
        except (OverlaydError, OSError) as exc:
            log.warning("reading WireGuard engine counters from %s: %s", self.device, exc)
            return None

    def peer_stats(self) -> dict[bytes, PeerStats]:
        if self.control is None:
            return {}
        try:
            return {p.public_key: p for p in self.control.peers()}
        except (OverlaydError, OSError) as exc:
            log.warning("reading WireGuard peer stats from %s: %s", self.device, exc)
            return {}
