"""overlayd: the per-host daemon.

Start-up: find the underlay and load what this host remembers (hoststate.py: its
subnet, VTEP MAC, cluster config and last known peers), then try etcd once:

- etcd answers: read the cluster config and claim a subnet (the saved one when possible);
- etcd does not answer, but the host has run before: come up on the saved state (same
  subnet, last known peers); the lease keeper claims the subnet again once etcd is back;
- etcd does not answer and nothing is saved: keep trying, there is nothing to program yet.

Then program the bridge and the tunnel device, reconcile pods and peers, and report
READY=1 (health "ok", or "degraded" while etcd is away). The long-lived jobs run in one
nursery: the control socket, the lease keeper (cluster/keeper.py), the lease watch feeding
the peer follower, and a periodic full reconcile, which also deletes kernel objects of
ours that the cluster no longer wants (e.g. left by a host deleted while we were down).

Nothing here cuts pod traffic for the control plane's sake: SIGTERM (or a crash) leaves
every kernel object and the lease in place, and the next start adopts them without a
flush; while etcd is away the kernel keeps what it last had; a lost lease is claimed again
for the same subnet only (another host holding it is reported, never shared); peers
missing from a listing that follows an outage get a short grace (cluster/grace.py).
"""

from __future__ import annotations

import argparse
import base64
import logging
import math
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import trio
from pyroute2 import IPRoute

from ipam.config import ClusterConfig
from overlayd import sdnotify
from overlayd.api.server import ControlServer
from overlayd.backend.host import ensure_host_network
from overlayd.backend.mac import random_local_mac
from overlayd.backend.overlap import check_cluster_network_on_host
from overlayd.backend.peers import PeerVtep
from overlayd.backend.recall import recall_host
from overlayd.backend.underlay import Underlay, detect_underlay
from overlayd.backend.vxlan import VxlanBackend
from overlayd.backend.vxlan_plan import vxlan_mtu
from overlayd.backend.wireguard import WIREGUARD_OVERHEAD, PeerStats, WgPeer, WireGuardBackend
from overlayd.cluster.client import ClusterClient
from overlayd.cluster.errors import SubnetTaken
from overlayd.cluster.grace import PeerGrace
from overlayd.cluster.keeper import LeaseKeeper
from overlayd.cluster.keys import IPNetwork, KeyLayout
from overlayd.cluster.records import HostRecord, Lease
from overlayd.cluster.watch import WatchBatch
from overlayd.config import DaemonConfig, add_daemon_arguments, config_from_args
from overlayd.errors import ClusterError, ConfigError, ConflictError, NotFoundError, OverlaydError, fatal_error
from overlayd.health import HealthModel, LoggingReporter
from overlayd.metrics import (CountingReporter, DaemonMetrics, HandshakeTracker, drops_from_engine_counters,
                              parse_listen_address, serve_metrics)
from overlayd.trust.config import HostTrust, load_host_trust
from overlayd.trust.errors import UntrustedConfig
from overlayd.hoststate import HostState, StateFiles
from overlayd.netns import enter_named_netns
from overlayd.pods.config import PodNetworkConfig
from overlayd.pods.manager import PodManager
from overlayd.pods.service import PodService
from overlayd.pods.store import PodStore
from overlayd.statefile import StateError

if TYPE_CHECKING:
    from overlayd.trust.guard import TrustGuard  # imported only with trust on: it loads `cryptography`

log = logging.getLogger("overlayd")
T = TypeVar("T")
Backend = VxlanBackend | WireGuardBackend

RESYNC_INTERVAL = 30.0  # full reconcile: repairs what someone else changed, deletes our strays
START_BACKOFF = (0.5, 2.0)  # retrying etcd at start-up while nothing is saved: min, max seconds
FIRST_LISTING_WAIT = 5.0  # at start with etcd up: wait this long for the peer listing, else use saved peers
WIREGUARD_POLL = 10.0  # WireGuard rekeys every 120 s: polling well within that misses no handshake
PEER_GRACE = 10.0  # seconds a peer missing from a post-outage listing stays programmed (cluster/grace.py)
ETCD_COMPONENTS = ("config", "lease", "watch")  # health components that mean "etcd trouble"


class Daemon:
    """One host's daemon; also the ControlPlane the control socket serves."""

    def __init__(self, config: DaemonConfig, *, renumber: bool = False) -> None:
        self.config = config
        self._renumber = renumber  # the operator asked to give up the saved subnet (and its pods)
        self._kernel_lock = trio.CapacityLimiter(1)  # netlink and namespaces: one job at a time
        self._converge_lock = trio.Lock()  # one peer convergence at a time, each from the newest state
        self._files = StateFiles(config.state_dir)
        self._rng = random.SystemRandom()
        self.health = HealthModel()
        # The subnet conflict needs an operator: logged at error level.
        self.metrics = DaemonMetrics()
        self.reporter = CountingReporter(LoggingReporter(log, self.health, loud=("subnet",)), self.metrics)
        self._handshakes = HandshakeTracker()
        self.trust: HostTrust | None = None
        self.guard: TrustGuard | None = None  # with a trust anchor: re-checks, revocations, signed config
        self.cluster: ClusterClient | None = None
        self.cluster_config: ClusterConfig | None = None
        self.subnet: IPNetwork | None = None
        self.keeper: LeaseKeeper | None = None
        self.record: HostRecord | None = None  # what we announce
        self.underlay: Underlay | None = None
        self.backend: Backend | None = None
        self.pods: PodService | None = None
        self.grace = PeerGrace(PEER_GRACE)
        self._listed: Mapping[IPNetwork, Lease] = {}  # the newest peer set etcd (or the saved state) gave us
        self._known: Mapping[IPNetwork, Lease] = {}  # _listed less peers whose certificate ran out or was revoked
        self.peer_leases: Mapping[IPNetwork, Lease] = {}  # what was last programmed: _known plus held peers
        self._saved_peers: dict[IPNetwork, HostRecord] | None = None
        self.refused_peers = 0
        self._started = time.monotonic()

    # --- plumbing -----------------------------------------------------------

    async def _kernel(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=self._kernel_lock)

    async def _disk(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args))  # fsync takes milliseconds

    def _note(self, message: str) -> None:
        """A one-off error: logged and kept as last_error, health unchanged."""
        self.health.note(message)
        log.warning("%s", message)

    def _save_host(self, state: HostState) -> HostState:
        self._files.save_host(state)
        return state

    # --- start-up -----------------------------------------------------------

    async def _start(self, ipr: Any) -> Lease | None:
        """Everything up to programmed pods; returns the lease, or None when running on saved state.

        Local state is read (and damaged files set aside) before etcd or the kernel is touched;
        what a damaged file lost comes back from the kernel, then from etcd. The host never
        moves to another subnet on its own: only --renumber does that.
        """
        config = self.config
        state, problems = self._files.load_host()
        problems += self._check_pod_store()
        for problem in problems:
            self._damaged(problem)
        self.underlay = await self._kernel(detect_underlay, ipr, public_ip=config.public_ip,
                                           interface=config.public_interface)
        # Files only, so it works while etcd is down; ConfigError if key, cert and anchor disagree.
        self.trust = load_host_trust(config.trust, node=config.node_name, state_dir=config.state_dir)
        self.guard = self._make_guard(self.trust)
        self.cluster = ClusterClient.open(
            config.etcd, lease_ttl=config.lease_ttl, encoder=self.trust.signer,
            verifier=self.guard.verifier if self.guard else self.trust.verifier,
            config_verifier=self.guard.config_verifier if self.guard else None)
        state = await self._recall_from_kernel(ipr, state)
        online = await self._read_cluster_config(state)
        assert self.cluster_config is not None
        if online and self.guard is not None:  # before the first listing, so revoked hosts never count
            await self._refresh_revocations()
            self._check_own_certificate()
        # Before any lease: a cluster network over our own networks would cut this host off.
        await self._kernel(check_cluster_network_on_host, ipr, self.cluster_config.network,
                           ours=(config.bridge_name, config.vxlan_device, config.wireguard_device))
        if state.vtep_mac is None:
            state = self._save_host(replace(state, vtep_mac=random_local_mac(self._rng)))
        self.backend = self._make_backend(ipr, state)
        self.record = HostRecord(config.node_name, self.underlay.ip, self.backend.backend_data())
        if online and state.subnet is None:
            state = replace(state, subnet=await self._find_own_subnet())
        lease = await self._claim_at_start(state.subnet) if online else None
        self.subnet = lease.subnet if lease is not None else state.subnet
        assert self.subnet is not None
        self._save_host(replace(state, subnet=self.subnet, cluster_config=self.cluster_config))
        log.info("%s subnet %s (public ip %s, %s)", "holding" if lease else "running on saved", self.subnet,
                 self.underlay.ip, self.underlay.ifname)

        mtu = self.backend.mtu
        host = await self._kernel(ensure_host_network, ipr, bridge=config.bridge_name, subnet=self.subnet, mtu=mtu)
        await self._kernel(self.backend.setup, self.subnet)
        if self._renumber:  # the operator's order: the pods of the old subnet go with it
            (config.state_dir / "pods.json").unlink(missing_ok=True)
        self.pods = await self._kernel(self._open_pods, host.gateway, mtu)
        for problem in self.pods.problems:
            self._damaged(problem)
        report = await self._kernel(self.pods.reconcile, renumbered=self._renumber)
        if report.adopted:
            log.warning("pods taken back from the kernel: %s", ", ".join(report.adopted))
        if report.untouched:
            # Running pods this host cannot number: left alone for the operator.
            self.reporter.fail("pods", "pods left as they are, outside this host's pod store: " + "; ".join(
                f"{name} ({why})" for name, why in report.untouched.items()))
        if report.dropped or report.removed or report.failed:
            log.warning("pods reconciled: dropped %s, removed %s, failed %s",
                        report.dropped, report.removed, report.failed)
        return lease

    def _check_pod_store(self) -> list[str]:
        """Read the pod store before anything else; a damaged one is set aside (PodService
        then takes the pods back from the kernel)."""
        store = PodStore(self.config.state_dir / "pods.json")
        try:
            store.load()
            return []
        except StateError as exc:
            return [f"{exc}; set aside as {store.set_aside()}; pods are taken back from the kernel"]
        finally:
            store.close()

    def _damaged(self, problem: str) -> None:
        """A damaged local file: loud, because something outside overlayd broke it."""
        self.health.note(problem)
        self.metrics.state_damaged.inc()
        log.error("%s", problem)

    async def _recall_from_kernel(self, ipr: Any, state: HostState) -> HostState:
        """Fill in what the saved state lacks from what the kernel still has (bridge, VXLAN device)."""
        if state.subnet is not None and state.vtep_mac is not None:
            return state
        recalled = await self._kernel(recall_host, ipr, bridge=self.config.bridge_name,
                                      vxlan_device=self.config.vxlan_device)
        if state.subnet is None and recalled.subnet is not None:
            log.warning("subnet %s recalled from bridge %s", recalled.subnet, self.config.bridge_name)
            state = replace(state, subnet=recalled.subnet)
        if state.vtep_mac is None and recalled.vtep_mac is not None:
            state = replace(state, vtep_mac=recalled.vtep_mac)
        return state

    async def _find_own_subnet(self) -> IPNetwork | None:
        """With nothing saved or in the kernel: a key in etcd naming this node and public IP."""
        assert self.cluster is not None and self.cluster_config is not None and self.record is not None
        try:
            found = await self.cluster.find_own(self.cluster_config, self.record)
        except ClusterError as exc:
            self.reporter.fail("lease", f"looking for this host's subnet in etcd failed: {exc}")
            return None
        if found is not None:
            log.warning("subnet %s recalled from etcd (its key names %s at %s)", found, self.record.node,
                        self.record.public_ip)
        return found

    async def _read_cluster_config(self, state: HostState) -> bool:
        """Set self.cluster_config; True if etcd gave it, False if we run on the saved state."""
        assert self.cluster is not None
        backoff = START_BACKOFF[0]
        while True:
            try:
                cluster_config = await self.cluster.get_config()
            except UntrustedConfig as exc:
                # Someone with etcd access, not the CA: never renumber or re-tunnel for it.
                if state.cluster_config is not None:
                    self.reporter.fail("signed_config", f"{exc}: refused; running on this host's saved cluster config")
                    self.cluster_config = state.cluster_config
                    return True
                self.reporter.fail("signed_config", f"{exc}: refused; waiting for a config signed by the cluster CA")
                await trio.sleep(backoff)
                backoff = min(backoff * 2, START_BACKOFF[1])
                continue
            except (ClusterError, NotFoundError, ConfigError) as exc:
                if state.subnet is not None and state.cluster_config is not None:
                    self.reporter.fail("lease", f"etcd: {exc}; running on this host's saved state until it is back")
                    self.cluster_config = state.cluster_config
                    return False
                self.reporter.fail("config", f"cannot read the cluster config: {exc}")
                await trio.sleep(backoff)
                backoff = min(backoff * 2, START_BACKOFF[1])
                continue
            self.reporter.recover("config")
            self.reporter.recover("signed_config")
            if state.cluster_config is not None and cluster_config != state.cluster_config:
                log.warning("the cluster config changed since this host last ran: %s", cluster_config.to_json())
            self.cluster_config = cluster_config
            return True

    async def _claim_at_start(self, previous: IPNetwork | None) -> Lease | None:
        """The lease on this host's subnet; None means: run on the saved subnet and let the keeper
        claim it again (etcd failed, or another host holds it: reported, and never renumbered).
        A host with no subnet yet, or one the operator renumbers, claims a new one."""
        assert self.cluster is not None and self.cluster_config is not None and self.record is not None
        if previous is not None and self._renumber:
            if await self.cluster.give_up(previous, self.record):
                log.warning("--renumber: gave up subnet %s; its pods are removed", previous)
            previous = None
        if previous is not None:
            try:
                lease = await self.cluster.reclaim(self.cluster_config, self.record, previous)
            except SubnetTaken as exc:
                self.reporter.fail("subnet", f"{exc}: this host keeps its pods on it and does not announce it "
                                             "until it is free again (or restart overlayd with --renumber)")
                return None
            except (ClusterError, ConflictError) as exc:
                self.reporter.fail("lease", f"claiming subnet {previous} failed: {exc}")
                return None
            self.reporter.recover("lease")
            return lease
        backoff = START_BACKOFF[0]
        while True:
            try:
                lease = await self.cluster.acquire(self.cluster_config, self.record)
            except (ClusterError, ConflictError) as exc:
                self.reporter.fail("lease", f"claiming a subnet failed: {exc}")
                await trio.sleep(backoff)
                backoff = min(backoff * 2, START_BACKOFF[1])
                continue
            self.reporter.recover("lease")
            return lease

    def _make_backend(self, ipr: Any, state: HostState) -> Backend:
        """The tunnel backend the cluster config names, sized to the underlay MTU."""
        assert self.underlay is not None and self.cluster_config is not None and state.vtep_mac is not None
        config, backend = self.config, self.cluster_config.backend
        if backend.type == "vxlan":
            mtu = config.mtu or vxlan_mtu(self.underlay.mtu, self.underlay.ip.version)
            return VxlanBackend.for_underlay(ipr, config.vxlan_device, backend.vni, backend.port, self.underlay,
                                             state.vtep_mac, mtu=mtu)
        if backend.type == "wireguard":
            from overlayd.backend import wgkeys  # loads `cryptography`, which a VXLAN daemon does without

            keys = wgkeys.load_or_create(config.state_dir / "wireguard.key")
            return WireGuardBackend(ipr, config.wireguard_device, keys, backend.port,
                                    config.mtu or self.underlay.mtu - WIREGUARD_OVERHEAD,
                                    implementation=config.wireguard.implementation,
                                    socket_dir=config.wireguard.socket_dir, log_dir=config.run_dir)
        raise ConfigError(f"backend {backend.type!r} is not supported")

    def _peer_from_lease(self, lease: Lease) -> Any:
        """The backend's view of a peer; OverlaydError if its record does not fit our backend."""
        record = lease.record
        if isinstance(self.backend, WireGuardBackend):
            return WgPeer.from_backend_data_untrusted(record.public_ip, record.backend, lease.create_revision)
        return PeerVtep.from_backend_data_untrusted(record.public_ip, record.backend, lease.create_revision)

    def _open_pods(self, gateway: Any, mtu: int) -> PodService:
        assert self.subnet is not None
        config = self.config
        pod_network = PodNetworkConfig(
            bridge=config.bridge_name, gateway=gateway.ip, prefixlen=self.subnet.prefixlen,
            link_prefix=config.link_prefix, netns_dir=config.netns_dir, netns_prefix=config.netns_prefix,
            pod_run_dir=config.pod_run_dir, mtu=mtu)
        return PodService(PodManager(pod_network), PodStore(config.state_dir / "pods.json"),
                          self.subnet, config.node_name)

    def _saved_peer_leases(self) -> dict[IPNetwork, Lease]:
        assert self.cluster_config is not None
        peers, problems = self._files.load_peers(self.cluster_config)
        for problem in problems:
            self._note(f"saved peers: {problem}")
        peers.pop(self.subnet, None)  # type: ignore[arg-type]
        return peers

    # --- peers --------------------------------------------------------------

    def _take_batch(self, batch: WatchBatch, *, hold_missing: bool) -> None:
        for reason in batch.rejected:
            self.health.note(f"skipped etcd record: {reason}")
        self.metrics.count_dropped(batch.rejected)
        if batch.refused:  # never "ok" while etcd holds a record we refuse
            first_key = min(batch.refused)
            self.reporter.fail("records", f"{len(batch.refused)} etcd record(s) refused, e.g. "
                                          f"{batch.refused[first_key]}")
        else:
            self.reporter.recover("records")
        self.metrics.leases.set(len(batch.peers) + 1)
        if hold_missing:
            missing = {s: lease for s, lease in self.peer_leases.items() if s not in batch.peers}
            if missing:
                log.info("peers missing after an outage, kept for %gs unless they come back: %s", PEER_GRACE,
                         ", ".join(f"{lease.record.node} ({s})" for s, lease in missing.items()))
            self.grace.hold(missing, trio.current_time())
        self._listed = batch.peers
        self._known = self._screen(batch.peers)

    async def _follow_peers(self, batches: trio.MemoryReceiveChannel[WatchBatch]) -> None:
        """Converge to every batch; the first listing after a broken watch holds missing peers."""
        while True:
            deadline = self.grace.next_deadline()
            received_at: float | None = None  # stays None when a peer's grace ran out instead
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                batch = await batches.receive()
                received_at = time.monotonic()
                # Each batch carries the complete peer set: take all that queued up, converge once.
                while batch is not None:
                    self._take_batch(batch, hold_missing=batch.resync)
                    try:
                        batch = batches.receive_nowait()
                    except trio.WouldBlock:
                        batch = None
            await self._converge()
            if received_at is not None:
                self.metrics.event_to_kernel.observe(time.monotonic() - received_at)

    async def _converge(self) -> None:
        """Program the peers we know (plus those in their grace) and save them for the next start."""
        assert self.backend is not None
        async with self._converge_lock:
            peers = self.grace.wanted(self._known, trio.current_time())
            self.peer_leases = peers
            wanted: dict[IPNetwork, Any] = {}
            for subnet, lease in peers.items():
                try:
                    wanted[subnet] = self._peer_from_lease(lease)
                except OverlaydError as exc:
                    self.refused_peers += 1
                    self._note(f"peer {lease.record.node} ({subnet}) not programmed: {exc}")
            started = time.monotonic()
            try:
                result = await self._kernel(self.backend.reconcile, wanted)
            except OverlaydError as exc:
                self.metrics.reconcile_runs.inc(result="error")
                self.reporter.fail("kernel", f"reconcile failed: {exc}")
                return
            finally:
                self.metrics.reconcile_duration.observe(time.monotonic() - started)
            self.metrics.reconcile_runs.inc(result="ok")
            refused = len(peers) - len(wanted) + result.refused
            self.metrics.peers.set(len(wanted) - result.refused)
            self.metrics.refused_peers.set(refused)
            self.reporter.recover("kernel")
            if refused:  # a host we cannot reach is not a healthy cluster, whoever is at fault
                self.reporter.fail("peers", f"{refused} of {len(peers)} peers refused (see last_error and logs)")
            else:
                self.reporter.recover("peers")
            if result.added or result.changed or result.removed:
                log.info("peers: %d (kernel objects added %d, changed %d, removed %d)",
                         len(wanted), result.added, result.changed, result.removed)
            await self._save_peers(peers)

    async def _save_peers(self, peers: Mapping[IPNetwork, Lease]) -> None:
        records = {subnet: lease.record for subnet, lease in peers.items()}
        if records == self._saved_peers:
            return
        try:
            await self._disk(self._files.save_peers, peers)
        except OverlaydError as exc:
            self._note(f"cannot save the peer set: {exc}")
            return
        self._saved_peers = records

    async def _serve_metrics(self, nursery: trio.Nursery) -> None:
        if not self.config.metrics_address:
            return
        host, port = parse_listen_address(self.config.metrics_address)
        try:
            await nursery.start(serve_metrics, self.metrics.registry, host, port)
        except OSError as exc:  # a busy port must not stop the daemon
            self._note(f"metrics endpoint {self.config.metrics_address}: {exc.strerror or exc}")

    async def _follow_wireguard(self) -> None:
        """WireGuard handshakes (from the latest-handshake times the interface reports) and the
        engine's drops by reason, polled: the engine is another process."""
        drops: dict[str, int] | None = None
        self.metrics.set_wireguard_drops_source(lambda: drops)
        while isinstance(self.backend, WireGuardBackend):
            stats = await self._kernel(self.backend.peer_stats)
            self.metrics.wireguard_handshakes.inc(
                self._handshakes.update({key: peer.latest_handshake for key, peer in stats.items()}))
            counters = await self._kernel(self.backend.engine_counters)
            drops = drops_from_engine_counters(counters) if counters is not None else None
            await trio.sleep(WIREGUARD_POLL)

    # --- trust re-checks (overlayd/trust/guard.py) ---------------------------

    def _make_guard(self, trust: HostTrust) -> TrustGuard | None:
        if trust.signer is None or trust.verifier is None:
            return None
        from overlayd.trust.guard import TrustGuard

        guard = TrustGuard(trust.signer, trust.verifier, KeyLayout(self.config.etcd.prefix), self.config.state_dir)
        problem = guard.revocations.load_saved()
        if problem is not None:
            self._damaged(problem)
        return guard

    def _screen(self, peers: Mapping[IPNetwork, Lease]) -> Mapping[IPNetwork, Lease]:
        """The peers whose certificates still hold; the others are dropped, counted once with their reason."""
        if self.guard is None:
            return peers
        kept, dropped = self.guard.screen(peers)
        for reason in dropped:
            self._note(str(reason))
        self.metrics.count_dropped(dropped)
        return kept

    async def _refresh_revocations(self) -> None:
        assert self.guard is not None and self.cluster is not None
        try:
            kv = await self.cluster.read_key(self.guard.revocations.key)
        except ClusterError:
            return  # etcd trouble: the watch reports it; the list we have stays in force
        changed, problem = self.guard.refresh(kv.value if kv is not None else None)
        if problem is not None:
            self._note(problem)
        if changed:
            current = self.guard.revocations.current
            assert current is not None
            log.warning("revocation list generation %d in force: %d revoked certificate(s)", current.generation,
                        len(current.serials))

    def _check_own_certificate(self) -> None:
        assert self.guard is not None
        problem = self.guard.own_problem()
        if problem is not None:
            self.reporter.fail("trust", problem)
        else:
            self.reporter.recover("trust")

    async def _check_config(self) -> None:
        """Is the config in etcd (still) one the CA signed? Applied only at the next start either way."""
        assert self.cluster is not None
        try:
            await self.cluster.get_config()
        except UntrustedConfig as exc:
            self.reporter.fail("signed_config", f"{exc}: refused; running on the cluster config this host has")
            return
        except (ClusterError, NotFoundError, ConfigError):
            return  # not a trust matter, and never a reason to change anything while running
        self.reporter.recover("signed_config")

    async def _recheck_trust(self) -> None:
        """Certificates run out and get revoked without any etcd event on the records carrying them."""
        while True:
            await trio.sleep(self.config.trust.recheck_interval)
            await self._refresh_revocations()
            await self._check_config()
            self._check_own_certificate()
            # From the listed set, not the screened one: a host that renewed its certificate and
            # re-signed its record in place (no change a peer diff would see) comes back here.
            kept = self._screen(self._listed)
            if kept != self._known:
                self._known = kept
                await self._converge()

    async def _resync_periodically(self) -> None:
        while True:
            await trio.sleep(RESYNC_INTERVAL)
            await self._converge()

    # --- run ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        config.run_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        ipr = IPRoute()
        try:
            async with trio.open_nursery() as nursery:
                server = ControlServer(config.control_socket, self, group=config.socket_group)
                await nursery.start(server.serve)
                await self._serve_metrics(nursery)
                lease = await self._start(ipr)
                assert self.cluster and self.cluster_config and self.subnet and self.record
                batch_send, batch_recv = trio.open_memory_channel[WatchBatch](16)
                nursery.start_soon(partial(self.cluster.follow_leases, self.cluster_config, batch_send, self.subnet,
                                           reporter=self.reporter))
                first = None
                if lease is not None:
                    with trio.move_on_after(FIRST_LISTING_WAIT):
                        first = await batch_recv.receive()
                if first is not None:
                    self._take_batch(first, hold_missing=False)
                else:
                    self._listed = self._known = self._saved_peer_leases()
                await self._converge()
                self.keeper = self.cluster.lease_keeper(self.cluster_config, self.record, self.subnet, lease,
                                                        reporter=self.reporter)
                await nursery.start(self.keeper.run)
                nursery.start_soon(self._follow_peers, batch_recv)
                nursery.start_soon(self._resync_periodically)
                nursery.start_soon(self._follow_wireguard)
                if self.guard is not None:
                    nursery.start_soon(self._recheck_trust)
                self.health.set_ready()
                self.metrics.ready.set(1)
                sdnotify.notify("READY=1")
                log.info("ready: %d peers, %d pods, health %s", len(self.peer_leases),
                         len(self.pods.list()) if self.pods else 0, self.health.report().health)
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
        """Answered from memory, never from etcd: it must work best when etcd does not."""
        report = self.health.report()
        now = self.health.now()
        etcd_problems = [p for p in report.problems if p.component in ETCD_COMPONENTS]
        ttl_left = self.keeper.ttl_left() if self.keeper else None
        return {
            "node": self.config.node_name,
            "ready": self.health.ready,
            "health": report.health,
            "problems": [p.describe(now) for p in report.problems],
            "last_error": report.last_error,
            "etcd": f"error: {etcd_problems[0].message}" if etcd_problems else "ok",
            "subnet": str(self.subnet) if self.subnet else None,
            "lease": self.keeper.state if self.keeper else None,
            "lease_ttl": self.config.lease_ttl,
            "lease_ttl_left": math.ceil(ttl_left) if ttl_left is not None else None,
            "public_ip": str(self.underlay.ip) if self.underlay else None,
            "backend": self.cluster_config.backend.type if self.cluster_config else None,
            "peers": len(self.peer_leases),
            "peers_in_grace": len(self.grace.held),
            "refused_peers": self.refused_peers,
            "pods": len(self.pods.list()) if self.pods else 0,
            "trust": (self.trust.status() | (self.guard.status() if self.guard else {})) if self.trust else None,
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
    parser.add_argument("--renumber", action="store_true",
                        help="give up this host's subnet and claim a new one; pods of the old subnet are deleted")
    args = parser.parse_args(argv)
    renumber = vars(args).pop("renumber")  # an action for this start, not a setting
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
        trio.run(_serve_until_signalled, Daemon(config, renumber=renumber))
    except (OverlaydError, OSError, BaseExceptionGroup) as exc:
        fatal = fatal_error(exc)
        if fatal is None:
            raise
        log.error("%s", fatal)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
