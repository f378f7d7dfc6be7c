"""overlayd: the per-host daemon.

Start-up, in order: find the underlay, reach etcd, read the cluster config,
claim a subnet (the one held before when possible), program the host bridge
and the tunnel device, reconcile pods, then serve the control socket and run
three long-lived tasks in one nursery: the lease keeper, the watch that feeds
peer changes to the backend, and a periodic full reconcile.

SIGTERM stops the daemon but leaves every kernel object in place and does not
release the lease, so pod traffic keeps flowing and the next start adopts it
all without a flush.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio
from pyroute2 import IPRoute

from ipam.config import ClusterConfig
from overlayd import sdnotify
from overlayd.api.server import ControlServer
from overlayd.backend.host import ensure_host_network
from overlayd.backend.mac import parse_mac_untrusted, random_local_mac
from overlayd.backend.peers import PeerVtep
from overlayd.backend.underlay import Underlay, detect_underlay
from overlayd.backend.vxlan import VxlanBackend
from overlayd.backend.vxlan_plan import vxlan_mtu
from overlayd.backend import wgkeys
from overlayd.backend.wireguard import WIREGUARD_OVERHEAD, PeerStats, WgPeer, WireGuardBackend
from overlayd.cluster.client import ClusterClient
from overlayd.cluster.records import HostRecord, Lease
from overlayd.cluster.watch import WatchBatch
from overlayd.config import DaemonConfig, add_daemon_arguments, config_from_args
from overlayd.errors import ClusterError, ConfigError, ConflictError, NotFoundError, OverlaydError
from overlayd.netns import enter_named_netns
from overlayd.pods.config import PodNetworkConfig
from overlayd.pods.manager import PodManager
from overlayd.pods.service import PodService
from overlayd.pods.store import PodStore
from overlayd.statefile import StateError, read_json, write_json_atomic

log = logging.getLogger("overlayd")
T = TypeVar("T")
Backend = VxlanBackend | WireGuardBackend

RESYNC_INTERVAL = 30.0  # full reconcile, catching kernel objects someone else changed
MAX_BACKOFF = 10.0


class Daemon:
    """One host's daemon; also the ControlPlane the control socket serves."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self._kernel_lock = trio.CapacityLimiter(1)  # netlink and namespaces: one job at a time
        self._state_path = config.state_dir / "host.json"
        self._rng = random.SystemRandom()
        self.cluster: ClusterClient | None = None
        self.cluster_config: ClusterConfig | None = None
        self.lease: Lease | None = None
        self.underlay: Underlay | None = None
        self.backend: Backend | None = None
        self.pods: PodService | None = None
        self.peer_leases: Mapping[Any, Lease] = {}
        self.refused_peers = 0
        self.last_error: str | None = None
        self.ready = False  # set once pods and peers are programmed
        self._started = time.monotonic()

    # --- plumbing -----------------------------------------------------------

    async def _kernel(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=self._kernel_lock)

    def _record_error(self, message: str) -> None:
        self.last_error = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {message}"
        log.warning("%s", message)

    def _load_state(self) -> dict[str, Any]:
        try:
            state = read_json(self._state_path)
        except StateError as exc:
            self._record_error(f"ignoring unreadable host state: {exc}")
            return {}
        return state if isinstance(state, dict) else {}

    def _save_state(self, **changes: Any) -> None:
        state = self._load_state()
        state.update(changes)
        write_json_atomic(self._state_path, state)

    # --- start-up -----------------------------------------------------------

    async def _connect(self) -> ClusterClient:
        backoff = 0.5
        while True:
            try:
                return await ClusterClient.connect(self.config.etcd, lease_ttl=self.config.lease_ttl)
            except ClusterError as exc:
                self._record_error(f"etcd not reachable, retrying in {backoff:g}s: {exc}")
                await trio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _read_cluster_config(self, cluster: ClusterClient) -> ClusterConfig:
        backoff = 0.5
        while True:
            try:
                return await cluster.get_config()
            except NotFoundError:
                self._record_error("no cluster config in etcd yet: run `overlayctl network init`")
            except (ClusterError, ConfigError) as exc:
                self._record_error(f"reading the cluster config: {exc}")
            await trio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _vtep_mac(self, state: Mapping[str, Any]) -> str:
        """The VTEP MAC survives restarts, so peers' neighbour entries stay valid."""
        try:
            return parse_mac_untrusted(state["vtep_mac"])
        except (KeyError, ConfigError):
            mac = random_local_mac(self._rng)
            self._save_state(vtep_mac=mac)
            return mac

    async def _acquire(self, cluster: ClusterClient, record: HostRecord, previous: Any) -> Lease:
        backoff = 0.5
        while True:
            try:
                return await cluster.acquire(self.cluster_config, record, previous=previous)
            except (ClusterError, ConflictError) as exc:
                self._record_error(f"claiming a subnet failed, retrying in {backoff:g}s: {exc}")
                await trio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def start(self, ipr: Any) -> None:
        config = self.config
        state = self._load_state()
        self.underlay = await self._kernel(detect_underlay, ipr, public_ip=config.public_ip,
                                           interface=config.public_interface)
        self.cluster = await self._connect()
        self.cluster_config = await self._read_cluster_config(self.cluster)
        self.backend = self._make_backend(ipr, state)
        record = HostRecord(config.node_name, self.underlay.ip, self.backend.backend_data())
        previous = _parse_subnet(state.get("subnet"))
        self.lease = await self._acquire(self.cluster, record, previous)
        if previous is not None and self.lease.subnet != previous:
            self._record_error(f"previous subnet {previous} was taken; now using {self.lease.subnet}")
        self._save_state(subnet=str(self.lease.subnet))
        log.info("holding subnet %s (public ip %s, %s)", self.lease.subnet, self.underlay.ip,
                 self.underlay.ifname)

        mtu = self.backend.mtu
        host = await self._kernel(ensure_host_network, ipr, bridge=config.bridge_name,
                                  subnet=self.lease.subnet, mtu=mtu)
        await self._kernel(self.backend.setup, self.lease.subnet)
        self.pods = await self._kernel(self._open_pods, host.gateway, mtu)
        report = await self._kernel(self.pods.reconcile)
        if report.dropped or report.removed or report.failed:
            log.warning("pods reconciled: dropped %s, removed %s, failed %s",
                        report.dropped, report.removed, report.failed)

    def _make_backend(self, ipr: Any, state: Mapping[str, Any]) -> Backend:
        """The tunnel backend the cluster config names, sized to the underlay MTU."""
        assert self.underlay is not None and self.cluster_config is not None
        config, backend = self.config, self.cluster_config.backend
        if backend.type == "vxlan":
            mtu = config.mtu or vxlan_mtu(self.underlay.mtu, self.underlay.ip.version)
            return VxlanBackend.for_underlay(ipr, config.vxlan_device, backend.vni, backend.port, self.underlay,
                                             self._vtep_mac(state), mtu=mtu)
        if backend.type == "wireguard":
            keys = wgkeys.load_or_create(config.state_dir / "wireguard.key")
            return WireGuardBackend(ipr, config.wireguard_device, keys, backend.port,
                                    config.mtu or self.underlay.mtu - WIREGUARD_OVERHEAD,
                                    implementation=config.wireguard.implementation,
                                    socket_dir=config.wireguard.socket_dir, log_dir=config.run_dir)
        raise ConfigError(f"backend {backend.type!r} is not supported")

    def _peer_from_lease(self, lease: Lease) -> Any:
        """The backend's view of a peer; OverlaydError if its record does not fit our backend."""
        if isinstance(self.backend, WireGuardBackend):
            return WgPeer.from_backend_data_untrusted(lease.record.public_ip, lease.record.backend)
        return PeerVtep.from_backend_data_untrusted(lease.record.public_ip, lease.record.backend)

    def _open_pods(self, gateway: Any, mtu: int) -> PodService:
        assert self.lease is not None
        config = self.config
        pod_network = PodNetworkConfig(
            bridge=config.bridge_name, gateway=gateway.ip, prefixlen=self.lease.subnet.prefixlen,
            link_prefix=config.link_prefix, netns_dir=config.netns_dir, netns_prefix=config.netns_prefix,
            pod_run_dir=config.pod_run_dir, mtu=mtu)
        return PodService(PodManager(pod_network), PodStore(config.state_dir / "pods.json"),
                          self.lease.subnet, config.node_name)

    # --- long-lived tasks ---------------------------------------------------

    async def _follow_peers(self, batches: trio.MemoryReceiveChannel[WatchBatch]) -> None:
        async for batch in batches:
            # Each batch carries the complete peer set: converge to the newest one.
            while True:
                try:
                    batch = batches.receive_nowait()
                except trio.WouldBlock:
                    break
            for reason in batch.rejected:
                self._record_error(f"skipped etcd record: {reason}")
            await self._converge(batch.peers)

    async def _converge(self, peers: Mapping[Any, Lease]) -> None:
        assert self.backend is not None
        self.peer_leases = peers
        wanted: dict[Any, PeerVtep] = {}
        for subnet, lease in peers.items():
            try:
                wanted[subnet] = self._peer_from_lease(lease)
            except OverlaydError as exc:
                self.refused_peers += 1
                self._record_error(f"peer {lease.record.node} ({subnet}) not programmed: {exc}")
        try:
            result = await self._kernel(self.backend.reconcile, wanted)
        except OverlaydError as exc:
            self._record_error(f"reconcile failed: {exc}")
            return
        if result.added or result.changed or result.removed:
            log.info("peers: %d (kernel objects added %d, changed %d, removed %d)",
                     len(wanted), result.added, result.changed, result.removed)

    async def _resync_periodically(self) -> None:
        while True:
            await trio.sleep(RESYNC_INTERVAL)
            await self._converge(self.peer_leases)

    async def _follow_lease(self, leases: trio.MemoryReceiveChannel[Lease]) -> None:
        async for lease in leases:
            if self.lease is not None and lease.subnet != self.lease.subnet:
                # Renumbering live pods is not possible in place; say so loudly.
                self._record_error(f"lease lost and re-claimed as {lease.subnet} (was {self.lease.subnet}); "
                                   "restart overlayd to renumber this host")
            self.lease = lease
            self._save_state(subnet=str(lease.subnet))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        config.run_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        ipr = IPRoute()
        try:
            async with trio.open_nursery() as nursery:
                server = ControlServer(config.control_socket, self, group=config.socket_group)
                await nursery.start(server.serve)
                await self.start(ipr)
                assert self.cluster is not None and self.lease is not None
                lease_send, lease_recv = trio.open_memory_channel[Lease](1)
                batch_send, batch_recv = trio.open_memory_channel[WatchBatch](16)
                await nursery.start(self.cluster.run_keepalive, self.cluster_config, self.lease, lease_send)
                initial = await nursery.start(self.cluster.run_watch, self.cluster_config, batch_send,
                                              self.lease.subnet)
                await self._converge(initial.peers)
                nursery.start_soon(self._follow_peers, batch_recv)
                nursery.start_soon(self._follow_lease, lease_recv)
                nursery.start_soon(self._resync_periodically)
                self.ready = True
                sdnotify.notify("READY=1")
                log.info("ready: %d peers, %d pods", len(self.peer_leases), len(self.pods.list()) if self.pods else 0)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                if self.pods is not None:
                    await trio.to_thread.run_sync(self.pods.close)
                if self.cluster is not None:
                    await self.cluster.aclose()  # no release: the lease outlives a restart
                await trio.to_thread.run_sync(ipr.close)

    # --- ControlPlane (what the control socket offers) ---------------------

    def _require_pods(self) -> PodService:
        if self.pods is None:
            raise ConflictError("overlayd is still starting (no subnet yet); try again shortly")
        return self.pods

    async def status(self) -> dict[str, Any]:
        etcd = "ok"
        ttl_left = None
        if self.cluster is None:
            etcd = "connecting"
        elif self.lease is not None:
            try:
                ttl_left = await self.cluster.lease_ttl_left(self.lease)
            except ClusterError as exc:
                etcd = f"unreachable: {exc}"
        health = "ok" if etcd == "ok" and self.ready else "starting" if not self.ready else "degraded"
        return {
            "node": self.config.node_name,
            "ready": self.ready,
            "subnet": str(self.lease.subnet) if self.lease else None,
            "public_ip": str(self.underlay.ip) if self.underlay else None,
            "backend": self.cluster_config.backend.type if self.cluster_config else None,
            "lease_ttl": self.config.lease_ttl,
            "lease_ttl_left": ttl_left,
            "peers": len(self.peer_leases),
            "refused_peers": self.refused_peers,
            "pods": len(self.pods.list()) if self.pods else 0,
            "etcd": etcd,
            "health": health,
            "last_error": self.last_error,
            "uptime_s": round(time.monotonic() - self._started, 1),
        }

    async def hosts(self) -> list[dict[str, Any]]:
        if self.cluster is None or self.cluster_config is None:
            raise ConflictError("overlayd is still starting; try again shortly")
        listing = await self.cluster.list_leases(self.cluster_config)
        return [_lease_row(lease) | {"self": lease.record.node == self.config.node_name}
                for lease in listing.leases]

    async def peers(self) -> list[dict[str, Any]]:
        port = self.cluster_config.backend.port if self.cluster_config else None
        stats: Mapping[bytes, PeerStats] = {}
        if isinstance(self.backend, WireGuardBackend):
            stats = await self._kernel(self.backend.peer_stats)
        rows = []
        for lease in self.peer_leases.values():
            row = _lease_row(lease) | {"endpoint": f"{lease.record.public_ip}:{port}", "latest_handshake": None,
                                       "rx_bytes": None, "tx_bytes": None}
            key = lease.record.backend.get("public_key")
            peer = stats.get(base64.b64decode(key)) if key else None
            if peer is not None:
                handshake = peer.latest_handshake
                row |= {"endpoint": peer.endpoint or row["endpoint"], "rx_bytes": peer.rx_bytes,
                        "tx_bytes": peer.tx_bytes,
                        "latest_handshake": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(handshake))
                        if handshake else None}
            rows.append(row)
        return rows

    async def pod_add(self, name: str, labels: dict[str, str]) -> dict[str, Any]:
        pods = self._require_pods()
        return (await self._kernel(pods.add, name, labels)).to_dict()

    async def pod_del(self, name: str) -> None:
        pods = self._require_pods()
        await self._kernel(pods.delete, name)

    async def pod_get(self, name: str) -> dict[str, Any]:
        return self._require_pods().get(name).to_dict()

    async def pod_list(self) -> list[dict[str, Any]]:
        return [pod.to_dict() for pod in self._require_pods().list()]


def _lease_row(lease: Lease) -> dict[str, Any]:
    return {"node": lease.record.node, "subnet": str(lease.subnet), "public_ip": str(lease.record.public_ip),
            "backend": dict(lease.record.backend)}


def _parse_subnet(text: Any) -> Any:
    from ipaddress import ip_network

    try:
        return ip_network(text) if isinstance(text, str) else None
    except ValueError:
        return None


async def _serve_until_signalled(daemon: Daemon) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.run)
            async for signum in signals:
                log.info("%s: stopping; kernel state and lease stay for the next start",
                         signal.Signals(signum).name)
                sdnotify.notify("STOPPING=1")
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="overlayd", description="overlayd: pod overlay network daemon")
    add_daemon_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"overlayd: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if config.netns:
            # Before any thread exists, so every thread the daemon starts lives there.
            enter_named_netns(config.netns, config.netns_dir)
        trio.run(_serve_until_signalled, Daemon(config))
    except OverlaydError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
