"""Start-up: from files, kernel and etcd to a host with its subnet, tunnel device and pods.

Local state is read first (damaged files set aside, loudly) and nothing is touched before;
what a damaged file lost comes back from the kernel (bridge address, VXLAN device), then
from etcd (the key naming this node and public IP). Then, if etcd answers: the cluster
config and a claim on the subnet (the saved one; a host never moves to another subnet on
its own, only `--renumber` does that). If etcd does not answer but the host has run before,
it comes up on its saved state and the lease keeper claims the subnet once etcd is back.
Last, the bridge, the backend's device and the pods (reconciled with the kernel).

`Startup.run` returns a finished `Host`: every field set, nothing left to check later.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any

import trio

from ipam.config import ClusterConfig
from overlayd.backend.contract import Backend, BackendContext
from overlayd.backend.host import ensure_host_network
from overlayd.backend.mac import random_local_mac
from overlayd.backend.overlap import check_cluster_network_on_host
from overlayd.backend.recall import recall_host
from overlayd.backend.registry import make_backend
from overlayd.backend.underlay import Underlay, detect_underlay
from overlayd.cluster.client import ClusterClient
from overlayd.cluster.errors import SubnetTaken
from overlayd.cluster.keys import IPNetwork, KeyLayout
from overlayd.cluster.records import HostRecord, Lease
from overlayd.cni.service import CniService
from overlayd.cni.store import AttachmentStore
from overlayd.cni.wiring import CniWiring
from overlayd.config import DaemonConfig
from overlayd.errors import ClusterError, ConfigError, ConflictError, NotFoundError
from overlayd.health import HealthModel, Reporter
from overlayd.hoststate import HostState, StateFiles
from overlayd.metrics import DaemonMetrics
from overlayd.nat.keeper import NatKeeper, nat_keeper
from overlayd.policy.running import startup_rules
from overlayd.pods.dns import cluster_resolv
from overlayd.registry import cache as services_cache
from overlayd.registry.running import own_pod_entries
from overlayd.pods.config import PodNetworkConfig
from overlayd.pods.manager import PodManager
from overlayd.pods.service import PodService, ReconcileReport
from overlayd.pods.store import PodStore
from overlayd.statefile import StateError
from overlayd.trust.config import HostTrust, load_host_trust
from overlayd.trust.errors import UntrustedConfig

if TYPE_CHECKING:  # imported only with trust on: they load `cryptography`
    from overlayd.trust.recheck import TrustChecks

log = logging.getLogger("overlayd")

START_BACKOFF = (0.5, 2.0)  # retrying etcd at start-up while nothing is saved: min, max seconds
Runner = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Host:
    """This host, started."""

    underlay: Underlay
    trust: HostTrust
    checks: TrustChecks | None  # with a trust anchor
    cluster: ClusterClient
    cluster_config: ClusterConfig
    record: HostRecord  # what we announce
    subnet: IPNetwork
    lease: Lease | None  # None: running on the saved state until the keeper claims the subnet again
    backend: Backend
    pods: PodService
    nat: NatKeeper
    cni: CniService  # attachments of container runtimes (overlayd-cni), sharing the pods' address pool
    pod_resolv: str  # the resolv.conf pods get (pods/dns.py); CNI results carry it as `dns`
    gateway: IPv4Address | IPv6Address  # the bridge's address: pods' default route and cluster DNS


class Startup:
    def __init__(self, config: DaemonConfig, *, renumber: bool, files: StateFiles, health: HealthModel,
                 metrics: DaemonMetrics, reporter: Reporter, kernel: Runner) -> None:
        self.config = config
        self._renumber = renumber  # the operator asked to give up the saved subnet (and its pods)
        self._files = files
        self._health = health
        self._metrics = metrics
        self._report = reporter
        self._kernel = kernel

    async def run(self, ipr: Any) -> Host:
        config = self.config
        state, problems = self._files.load_host()
        problems += self._check_pod_store()
        for problem in problems:
            self._damaged(problem)
        underlay = await self._kernel(detect_underlay, ipr, public_ip=config.public_ip,
                                      interface=config.public_interface)
        # Files only, so it works while etcd is down; ConfigError if key, cert and anchor disagree.
        trust = load_host_trust(config.trust, node=config.node_name, state_dir=config.state_dir)
        guard = self._make_guard(trust)
        cluster = ClusterClient.open(
            config.etcd, lease_ttl=config.lease_ttl, encoder=trust.signer,
            verifier=guard.verifier if guard else trust.verifier,
            config_verifier=guard.config_verifier if guard else None)
        try:
            return await self._with_cluster(ipr, state, underlay, trust, guard, cluster)
        except BaseException:  # a fatal error or shutdown midway: no thread or socket left behind
            with trio.CancelScope(shield=True):
                await cluster.aclose()
            raise

    async def _with_cluster(self, ipr: Any, state: HostState, underlay: Underlay, trust: HostTrust, guard: Any,
                            cluster: ClusterClient) -> Host:
        config = self.config
        checks = self._make_checks(guard, cluster)
        state = await self._recall_from_kernel(ipr, state)
        cluster_config, online = await self._read_cluster_config(cluster, state)
        if online and checks is not None:  # before the first listing, so revoked hosts never count
            await checks.refresh_revocations()
            checks.check_own_certificate()
        # Before any lease: a cluster network over our own networks would cut this host off.
        await self._kernel(check_cluster_network_on_host, ipr, cluster_config.network,
                           ours=(config.bridge_name, config.vxlan_device, config.wireguard_device))
        if state.vtep_mac is None:
            state = self._save_host(replace(state, vtep_mac=random_local_mac(random.SystemRandom())))
        assert state.vtep_mac is not None
        backend = make_backend(cluster_config.backend.type, BackendContext(
            ipr=ipr, node=config.node_name, underlay=underlay, vtep_mac=state.vtep_mac,
            port=cluster_config.backend.port,
            vni=cluster_config.backend.vni, options=cluster_config.backend.options,
            link_prefix=config.link_prefix, state_dir=config.state_dir, run_dir=config.run_dir, mtu=config.mtu,
            wireguard_implementation=config.wireguard.implementation,
            wireguard_socket_dir=config.wireguard.socket_dir,
            wireguard_workers=config.wireguard.workers))
        record = HostRecord(config.node_name, underlay.ip, backend.backend_data())
        if online and state.subnet is None:
            state = replace(state, subnet=await self._find_own_subnet(cluster, cluster_config, record))
        lease = await self._claim(cluster, cluster_config, record, state.subnet) if online else None
        subnet = lease.subnet if lease is not None else state.subnet
        # Online, a subnet was claimed; offline, the config read returns only with one saved.
        assert subnet is not None
        self._save_host(replace(state, subnet=subnet, cluster_config=cluster_config))
        log.info("%s subnet %s (public ip %s, %s)", "holding" if lease else "running on saved", subnet,
                 underlay.ip, underlay.ifname)

        network = await self._kernel(ensure_host_network, ipr, bridge=config.bridge_name, subnet=subnet,
                                     mtu=backend.mtu)
        await self._kernel(backend.setup, subnet)
        resolv = self._pod_resolv(network.gateway.ip)
        pods = await self._kernel(self._open_pods, subnet, network.gateway, backend.mtu, resolv)
        try:
            for problem in pods.problems:
                self._damaged(problem)
            self._report_pods(await self._kernel(pods.reconcile, renumbered=self._renumber))
            cni = await self._kernel(self._open_cni, pods, subnet, network.gateway, backend.mtu)
            nat = nat_keeper(config, cluster_config.network, subnet, pods.publications, self._kernel, self._report,
                             services_cache.load(config.state_dir))
            # Network policy as last enforced (its cache), until the registry is listed: no pod opens at a restart.
            local = await self._kernel(own_pod_entries, config.node_name, pods, cni)
            nat.policy = startup_rules(config.node_name, subnet, config.state_dir, local)
            await nat.converge()  # egress masquerade and published ports (nat/)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(pods.close)
            raise
        return Host(underlay, trust, checks, cluster, cluster_config, record, subnet, lease, backend, pods, nat, cni,
                    resolv, network.gateway.ip)

    def _pod_resolv(self, gateway: IPv4Address | IPv6Address) -> str:
        """Pods ask cluster DNS on their gateway (IPv4 clusters); IPv6 clusters get the host's resolvers."""
        dns = self.config.dns
        if isinstance(gateway, IPv4Address):
            if not dns.upstreams():  # cluster names still resolve; the rest gets SERVFAIL
                self._report.fail("dns", "cluster DNS has no upstream resolver for other names: the host's "
                                         f"{dns.resolv_conf} lists none; set [dns] servers in the daemon config")
            try:
                host_text = dns.resolv_conf.read_text(errors="replace")
            except OSError:  # no search domains or options to carry over: ours alone
                host_text = ""
            return cluster_resolv(gateway, dns.domain, host_text)
        resolv, problem = dns.pod_resolv()
        if problem is not None:  # pods still work by address; the operator can fix names
            self._report.fail("dns", problem)
        return resolv

    # --- local state ----------------------------------------------------------

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
        self._health.note(problem)
        self._metrics.state_damaged.inc()
        log.error("%s", problem)

    def _save_host(self, state: HostState) -> HostState:
        self._files.save_host(state)
        return state

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

    def _open_pods(self, subnet: IPNetwork, gateway: Any, mtu: int, resolv: str) -> PodService:
        """The pod service (in a thread in the host's netns: its netlink sockets belong there)."""
        config = self.config
        if self._renumber:  # the operator's order: the pods of the old subnet go with it
            (config.state_dir / "pods.json").unlink(missing_ok=True)
        return PodService(PodManager(self._pod_network(subnet, gateway, mtu, resolv)),
                          PodStore(config.state_dir / "pods.json"), subnet, config.node_name)

    def _pod_network(self, subnet: IPNetwork, gateway: Any, mtu: int, resolv: str | None = None) -> PodNetworkConfig:
        """How pods (and CNI attachments, whose DNS the runtime sets up) are wired."""
        config = self.config
        return PodNetworkConfig(
            bridge=config.bridge_name, gateway=gateway.ip, prefixlen=subnet.prefixlen,
            link_prefix=config.link_prefix, netns_dir=config.netns_dir, netns_prefix=config.netns_prefix,
            pod_run_dir=config.pod_run_dir, mtu=mtu, etc_netns_dir=config.etc_netns_dir, resolv_conf=resolv)

    # --- CNI attachments ----------------------------------------------------------

    def _open_cni(self, pods: PodService, subnet: IPNetwork, gateway: Any, mtu: int) -> CniService:
        """The CNI attachments, after the pods (they share its pool); every stored one is kept."""
        wiring = CniWiring(self._pod_network(subnet, gateway, mtu))
        cni = CniService(wiring, AttachmentStore(self.config.state_dir / "cni.json"), pods.pool,
                         on_count=self._metrics.cni_attachments.set)
        for problem in cni.problems:
            self._damaged(problem)
        report = cni.reconcile()
        if report.waiting or report.failed or report.unknown_links or report.finished_deletes:
            log.warning("CNI attachments: %d kept, waiting for DEL (netns gone) %s, failed %s, "
                        "links without a record left alone %s, deletes finished %s", len(report.kept),
                        report.waiting, report.failed, report.unknown_links, report.finished_deletes)
        if report.failed:
            self._report.fail("cni", "CNI attachments not restored: " + "; ".join(
                f"{name} ({why})" for name, why in report.failed.items()))
        return cni

    def _report_pods(self, report: ReconcileReport) -> None:
        """Pods are never deleted at start, except those of the old subnet when the operator renumbers."""
        if report.adopted:
            log.warning("pods taken back from the kernel: %s", ", ".join(report.adopted))
        if report.untouched:
            # Running pods this host cannot number: left alone for the operator.
            self._report.fail("pods", "pods left as they are, outside this host's pod store: " + "; ".join(
                f"{name} ({why})" for name, why in report.untouched.items()))
        if report.dropped or report.removed or report.failed:
            log.warning("pods reconciled: dropped %s, removed %s, failed %s",
                        report.dropped, report.removed, report.failed)

    # --- trust ------------------------------------------------------------------

    def _make_guard(self, trust: HostTrust) -> Any:
        if trust.signer is None or trust.verifier is None:
            return None
        from overlayd.trust.guard import TrustGuard

        guard = TrustGuard(trust.signer, trust.verifier, KeyLayout(self.config.etcd.prefix), self.config.state_dir)
        problem = guard.revocations.load_saved()
        if problem is not None:
            self._damaged(problem)
        return guard

    def _make_checks(self, guard: Any, cluster: ClusterClient) -> TrustChecks | None:
        if guard is None:
            return None
        from overlayd.trust.recheck import TrustChecks

        return TrustChecks(guard, cluster, self._report, self._note)

    def _note(self, message: str) -> None:
        self._health.note(message)
        log.warning("%s", message)

    # --- etcd -------------------------------------------------------------------

    async def _read_cluster_config(self, cluster: ClusterClient, state: HostState) -> tuple[ClusterConfig, bool]:
        """The cluster config, and True if etcd gave it (False: running on the saved state)."""
        backoff = START_BACKOFF[0]
        while True:
            try:
                cluster_config = await cluster.get_config()
            except UntrustedConfig as exc:
                # Someone with etcd access, not the CA: never renumber or re-tunnel for it.
                if state.cluster_config is not None:
                    self._report.fail("signed_config", f"{exc}: refused; running on this host's saved cluster "
                                                       "config")
                    return state.cluster_config, True
                self._report.fail("signed_config", f"{exc}: refused; waiting for a config signed by the cluster CA")
            except (ClusterError, NotFoundError, ConfigError) as exc:
                if state.subnet is not None and state.cluster_config is not None:
                    self._report.fail("lease", f"etcd: {exc}; running on this host's saved state until it is back")
                    return state.cluster_config, False
                self._report.fail("config", f"cannot read the cluster config: {exc}")
            else:
                self._report.recover("config")
                self._report.recover("signed_config")
                if state.cluster_config is not None and cluster_config != state.cluster_config:
                    log.warning("the cluster config changed since this host last ran: %s", cluster_config.to_json())
                return cluster_config, True
            await trio.sleep(backoff)
            backoff = min(backoff * 2, START_BACKOFF[1])

    async def _find_own_subnet(self, cluster: ClusterClient, cluster_config: ClusterConfig,
                               record: HostRecord) -> IPNetwork | None:
        """With nothing saved or in the kernel: a key in etcd naming this node and public IP.
        Retried until etcd answers: guessing "none" would claim this host a second subnet."""
        backoff = START_BACKOFF[0]
        while True:
            try:
                found = await cluster.find_own(cluster_config, record)
                break
            except ClusterError as exc:
                self._report.fail("lease", f"looking for this host's subnet in etcd failed: {exc}")
                await trio.sleep(backoff)
                backoff = min(backoff * 2, START_BACKOFF[1])
        self._report.recover("lease")
        if found is not None:
            log.warning("subnet %s recalled from etcd (its key names %s at %s)", found, record.node, record.public_ip)
        return found

    async def _claim(self, cluster: ClusterClient, cluster_config: ClusterConfig, record: HostRecord,
                     previous: IPNetwork | None) -> Lease | None:
        """The lease on this host's subnet; None means: run on the saved subnet and let the keeper
        claim it again (etcd failed, or another host holds it: reported, and never renumbered).
        A host with no subnet yet, or one the operator renumbers, claims a new one."""
        if previous is not None and self._renumber:
            if await cluster.give_up(previous, record):
                log.warning("--renumber: gave up subnet %s; its pods are removed", previous)
            previous = None
        if previous is not None:
            try:
                lease = await cluster.reclaim(cluster_config, record, previous)
            except SubnetTaken as exc:
                self._report.fail("subnet", f"{exc}: this host keeps its pods on it and does not announce it "
                                            "until it is free again (or restart overlayd with --renumber)")
                return None
            except (ClusterError, ConflictError) as exc:
                self._report.fail("lease", f"claiming subnet {previous} failed: {exc}")
                return None
            self._report.recover("lease")
            return lease
        backoff = START_BACKOFF[0]
        while True:
            try:
                lease = await cluster.acquire(cluster_config, record)
            except (ClusterError, ConflictError) as exc:
                self._report.fail("lease", f"claiming a subnet failed: {exc}")
                await trio.sleep(backoff)
                backoff = min(backoff * 2, START_BACKOFF[1])
                continue
            self._report.recover("lease")
            return lease
