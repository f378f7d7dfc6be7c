"""overlayd: the per-host daemon, wired together.

Start-up (startup.py) reads what this host remembers, claims its subnet in etcd (or comes
up on its saved state while etcd is away) and programs bridge, tunnel device and pods.
Then one nursery runs the long-lived jobs: the control socket (api/), the lease keeper
(cluster/keeper.py), the lease watch feeding the peer loop (peerloop.py, which drives the
pure peer policy in peering.py), a periodic full reconcile that also deletes kernel
objects of ours that nobody announces any more, the backend's observations, and the
trust re-checks (trust/recheck.py). READY=1 goes to systemd when all of that runs.

Nothing here cuts pod traffic for the control plane's sake: SIGTERM (or a crash) leaves
every kernel object and the lease in place, and the next start adopts them without a
flush; while etcd is away the kernel keeps what it last had; a lost lease is claimed again
for the same subnet only; peers missing from a listing that follows an outage get a short
grace (cluster/grace.py).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from functools import partial
from ipaddress import IPv4Address
from typing import Any, TypeVar

import trio
from pyroute2 import IPRoute

from overlayd import sdnotify
from overlayd.api.answers import Answers, Running
from overlayd.api.server import ControlServer
from overlayd.cluster.grace import PeerGrace
from overlayd.cluster.keeper import LeaseKeeper
from overlayd.cluster.watch import WatchBatch
from overlayd.config import DaemonConfig, add_daemon_arguments, config_from_args
from overlayd.dns.names import ClusterNames
from overlayd.dns.resolver import NamesSource
from overlayd.dns.server import serve_dns
from overlayd.errors import ConfigError, OverlaydError, fatal_error
from overlayd.health import HealthModel, LoggingReporter
from overlayd.hoststate import StateFiles
from overlayd.logsetup import setup_logging
from overlayd.metrics import CountingReporter, DaemonMetrics, parse_listen_address, serve_metrics
from overlayd.netns import enter_named_netns
from overlayd.peering import PeerPolicy
from overlayd.peerloop import PeerLoop
from overlayd.policy.signing import PolicyVerifier
from overlayd.registry.records import PodEntry
from overlayd.registry.running import ClusterRegistry, own_pod_entries
from overlayd.sdwatchdog import inform_systemd, status_line
from overlayd.startup import Host, Startup
from overlayd.version import version_text

log = logging.getLogger("overlayd")
T = TypeVar("T")

FIRST_LISTING_WAIT = 5.0  # at start with etcd up: wait this long for the peer listing, else use saved peers
PEER_GRACE = 10.0  # seconds a peer missing from a post-outage listing stays programmed (cluster/grace.py)


class Daemon:
    """One host's daemon: health, metrics and the control socket from the first moment,
    then start-up, then the jobs."""

    def __init__(self, config: DaemonConfig, *, renumber: bool = False) -> None:
        self.config = config
        self._renumber = renumber
        self._kernel_lock = trio.CapacityLimiter(1)  # netlink and namespaces: one job at a time
        self._files = StateFiles(config.state_dir)
        self.health = HealthModel()
        self.metrics = DaemonMetrics()
        # The subnet conflict needs an operator: logged at error level.
        self.reporter = CountingReporter(LoggingReporter(log, self.health, loud=("subnet",)), self.metrics)
        self.answers = Answers(config, self.health, self._kernel)

    async def _kernel(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=self._kernel_lock)

    async def _disk(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args))  # fsync takes milliseconds

    def _note(self, message: str) -> None:
        """A one-off error: logged and kept as last_error, health unchanged."""
        self.health.note(message)
        log.warning("%s", message)

    async def _serve_metrics(self, nursery: trio.Nursery) -> None:
        if not self.config.metrics_address:
            return
        host, port = parse_listen_address(self.config.metrics_address)
        # Read at each scrape, from memory: the pod store once start-up has made one.
        self.metrics.set_pods_source(
            lambda: len(running.host.pods.list()) if (running := self.answers.running) else None)
        try:
            await nursery.start(serve_metrics, self.metrics.render, self.health.unready, host, port)
        except OSError as exc:  # a busy port must not stop the daemon
            self._note(f"metrics endpoint {self.config.metrics_address}: {exc.strerror or exc}")

    def _peer_loop(self, host: Host) -> PeerLoop:
        screen = host.checks.guard.screen if host.checks else None
        policy = PeerPolicy(host.backend.peer_from_record_untrusted, PeerGrace(PEER_GRACE), screen)
        return PeerLoop(host.backend, policy, files=self._files, metrics=self.metrics, reporter=self.reporter,
                        health=self.health, kernel=self._kernel, disk=self._disk)

    def _registry(self, host: Host, keeper: LeaseKeeper) -> ClusterRegistry:
        async def wanted() -> list[PodEntry]:
            return await self._kernel(own_pod_entries, self.config.node_name, host.pods, host.cni)

        return ClusterRegistry(node=self.config.node_name, prefix=self.config.etcd.prefix, etcd=host.cluster.store.etcd,
                               nat=host.nat, state_dir=self.config.state_dir, wanted=wanted,
                               lease_id=lambda: keeper.lease.lease_id if keeper.lease else None,
                               reporter=self.reporter, disk=self._disk, metrics=self.metrics,
                               encode_pod=host.trust.signer.sign_pod if host.trust.signer else None,
                               verify_pod=host.trust.verifier.verify_pod_untrusted if host.trust.verifier else None,
                               verify_policy=PolicyVerifier(host.trust.verifier.anchor) if host.trust.verifier else None)

    async def _serve_cluster_dns(self, nursery: trio.Nursery, host: Host, registry: ClusterRegistry) -> None:
        """Cluster DNS on the pods' gateway (IPv4 clusters), answering from the registry's names."""
        if not isinstance(host.gateway, IPv4Address):
            return
        domain = self.config.dns.domain
        names = NamesSource(ClusterNames(domain, *registry.view.names()) if registry.ready.is_set()
                            else ClusterNames(domain))
        registry.names_listeners.append(lambda pods, services: names.update(ClusterNames(domain, pods, services)))
        try:
            await nursery.start(serve_dns, names, host.gateway, self.config.dns.port, self.config.dns.upstreams(),
                                self.metrics.dns)
        except OSError as exc:  # pods keep working by address; the daemon goes on
            self.reporter.fail("dns", f"cluster DNS on {host.gateway}:{self.config.dns.port}: {exc.strerror or exc}")

    async def _first_peers(self, host: Host, peers: PeerLoop, batches: trio.MemoryReceiveChannel[WatchBatch]) -> None:
        """The first peer set: etcd's listing when it comes soon, else the one saved at the last run."""
        first = None
        if host.lease is not None:
            with trio.move_on_after(FIRST_LISTING_WAIT):
                first = await batches.receive()
        if first is not None:
            peers.take(first)
        else:
            saved, problems = self._files.load_peers(host.cluster_config)
            for problem in problems:
                self._note(f"saved peers: {problem}")
            saved.pop(host.subnet, None)
            peers.use_saved(saved)
        await peers.converge()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        config.run_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        ipr = IPRoute()
        host: Host | None = None
        try:
            async with trio.open_nursery() as nursery:
                server = ControlServer(config.control_socket, self.answers, group=config.socket_group,
                                       on_refused=self.metrics.count_refusal)
                await nursery.start(server.serve)
                await self._serve_metrics(nursery)
                startup = Startup(config, renumber=self._renumber, files=self._files, health=self.health,
                                  metrics=self.metrics, reporter=self.reporter, kernel=self._kernel)
                host = await startup.run(ipr)
                peers = self._peer_loop(host)
                batch_send, batch_recv = trio.open_memory_channel[WatchBatch](16)
                nursery.start_soon(partial(host.cluster.follow_leases, host.cluster_config, batch_send, host.subnet,
                                           reporter=self.reporter))
                await self._first_peers(host, peers, batch_recv)
                keeper = host.cluster.lease_keeper(host.cluster_config, host.record, host.subnet, host.lease,
                                                   reporter=self.reporter)
                await nursery.start(keeper.run)
                nursery.start_soon(peers.follow, batch_recv)
                nursery.start_soon(peers.save_pending)
                nursery.start_soon(peers.resync_periodically)
                nursery.start_soon(peers.observe_periodically)
                nursery.start_soon(host.nat.resync_periodically)
                if host.checks is not None:
                    nursery.start_soon(host.checks.run, config.trust.recheck_interval, peers.rescreen)
                registry = self._registry(host, keeper)
                nursery.start_soon(registry.run)
                if host.lease is not None:
                    # etcd answered at start: list the cluster's names before answering for them,
                    # or a pod asking right after a restart would be told its peers do not exist.
                    with trio.move_on_after(FIRST_LISTING_WAIT):
                        await registry.ready.wait()
                await self._serve_cluster_dns(nursery, host, registry)
                self.answers.running = Running(host, keeper, peers, registry)
                self.health.set_ready()
                self.metrics.ready.set(1)
                sdnotify.notify("READY=1")
                nursery.start_soon(inform_systemd, partial(status_line, host, peers, self.health))
                log.info("ready: %d peers, %d pods, health %s", len(peers.programmed), len(host.pods.list()),
                         self.health.report().health)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                if host is not None:
                    await trio.to_thread.run_sync(host.pods.close)
                    await trio.to_thread.run_sync(host.cni.close)
                    await host.cluster.aclose()  # no release: the lease outlives a restart
                await trio.to_thread.run_sync(ipr.close)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="overlayd", description="overlayd: pod overlay network daemon")
    parser.add_argument("--version", action="version", version=version_text("overlayd"),
                        help="print the version and exit")
    add_daemon_arguments(parser)
    parser.add_argument("--renumber", action="store_true",
                        help="give up this host's subnet and claim a new one; pods of the old subnet are deleted")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    renumber = vars(args).pop("renumber")  # an action for this start, not a setting
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"overlayd: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
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
