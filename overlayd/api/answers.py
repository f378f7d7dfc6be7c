"""What the daemon answers on its control socket (the ControlPlane of commands.py).

Status is answered from memory, never from etcd: it must work best when etcd does not.
Before start-up has finished there is no host yet: status says "starting", the rest
asks to try again shortly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from overlayd.cluster.keeper import LeaseKeeper
from overlayd.cluster.records import Lease
from overlayd.cni.handler import handle as handle_cni_call
from overlayd.cni.service import CniService
from overlayd.config import DaemonConfig
from overlayd.cluster.errors import RecordError
from overlayd.errors import ConflictError, NotFoundError, UsageError
from overlayd.health import HealthModel
from overlayd.nat.ports import Publication
from overlayd.peerloop import PeerLoop
from overlayd.pods.dns import cni_dns
from overlayd.pods.service import PodService
from overlayd.policy.model import Policy
from overlayd.policy.reach import evaluate, explain
from overlayd.registry.records import ServicePort, ServiceSpec
from overlayd.registry.running import ClusterRegistry
from overlayd.startup import Host

ETCD_COMPONENTS = ("config", "lease", "watch")  # health components that mean "etcd trouble"
Runner = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Running:
    """A started host and the jobs that keep it going."""

    host: Host
    keeper: LeaseKeeper
    peers: PeerLoop
    registry: ClusterRegistry


class Answers:
    def __init__(self, config: DaemonConfig, health: HealthModel, kernel: Runner) -> None:
        self.config = config
        self.health = health
        self._kernel = kernel
        self._started = time.monotonic()
        self.running: Running | None = None  # set once start-up has finished

    def _require(self) -> Running:
        if self.running is None:
            raise ConflictError("overlayd is still starting (no subnet yet); try again shortly")
        return self.running

    def _pods(self) -> PodService:
        return self._require().host.pods

    async def status(self) -> dict[str, Any]:
        report = self.health.report()
        now = self.health.now()
        etcd_problems = [p for p in report.problems if p.component in ETCD_COMPONENTS]
        running = self.running
        host = running.host if running else None
        ttl_left = running.keeper.ttl_left() if running else None
        return {
            "node": self.config.node_name,
            "ready": self.health.ready,
            "health": report.health,
            "problems": [p.describe(now) for p in report.problems],
            "last_error": report.last_error,
            "etcd": f"error: {etcd_problems[0].message}" if etcd_problems else "ok",
            "subnet": str(host.subnet) if host else None,
            "lease": running.keeper.state if running else None,
            "lease_ttl": self.config.lease_ttl,
            "lease_ttl_left": math.ceil(ttl_left) if ttl_left is not None else None,
            "public_ip": str(host.underlay.ip) if host else None,
            "backend": host.backend.type if host else None,
            "peers": len(running.peers.programmed) if running else 0,
            "peers_in_grace": len(running.peers.policy.held) if running else 0,
            "refused_peers": running.peers.refused if running else 0,
            "pods": len(host.pods.list()) if host else 0,
            "trust": (host.trust.status() | (host.checks.guard.status() if host.checks else {})) if host else None,
            "uptime_s": round(time.monotonic() - self._started, 1),
        }

    async def hosts(self) -> list[dict[str, Any]]:
        host = self._require().host
        listing = await host.cluster.list_leases(host.cluster_config)
        return [_lease_row(lease) | {"self": lease.record.node == self.config.node_name}
                for lease in listing.leases]

    async def peers(self) -> list[dict[str, Any]]:
        running = self._require()
        port = running.host.cluster_config.backend.port
        backend = running.host.backend
        seen = (await self._kernel(backend.observe)).peers if type(backend).observes else {}
        rows = []
        for lease in running.peers.programmed.values():
            endpoint = str(lease.record.public_ip) if port is None else f"{lease.record.public_ip}:{port}"
            row = _lease_row(lease) | {"endpoint": endpoint, "latest_handshake": None,
                                       "rx_bytes": None, "tx_bytes": None}
            peer = seen.get(lease.record.public_ip)
            if peer is not None:
                row |= {"endpoint": peer.endpoint or row["endpoint"], "rx_bytes": peer.rx_bytes,
                        "tx_bytes": peer.tx_bytes,
                        "latest_handshake": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(peer.latest_handshake))
                        if peer.latest_handshake else None}
            rows.append(row)
        return rows

    async def pod_add(self, name: str, labels: dict[str, str], ports: tuple[Publication, ...] = ()) -> dict[str, Any]:
        pod = (await self._kernel(self._pods().add, name, labels, ports)).to_dict()
        self._require().registry.pods_changed()
        await self._require().registry.policy.local_pods_changed()  # policy covers it before we return
        if ports:
            problem = await self._require().host.nat.converge()
            if problem is not None:  # the pod stays; the ports follow when the table can be written
                pod["warnings"] = [f"published ports not in place yet ({problem}); retried every 30 s, "
                                   "see `overlayctl status` (nat)"]
        return pod

    async def pod_del(self, name: str) -> None:
        published = self._pods().publishes(name)
        await self._kernel(self._pods().delete, name)
        self._require().registry.pods_changed()
        await self._require().registry.policy.local_pods_changed()
        if published:  # its DNAT rules go with it
            await self._require().host.nat.converge()

    async def pod_get(self, name: str) -> dict[str, Any]:
        return self._pods().get(name).to_dict()

    async def pod_list(self) -> list[dict[str, Any]]:
        return [pod.to_dict() for pod in self._pods().list()]

    # --- CNI attachments -------------------------------------------------------

    def _cni(self) -> CniService:
        return self._require().host.cni

    async def cni_add(self, network: str, container_id: str, ifname: str, netns: str) -> dict[str, Any]:
        attachment = await self._kernel(self._cni().add, network, container_id, ifname, netns)
        self._require().registry.pods_changed()
        await self._require().registry.policy.local_pods_changed()  # before the runtime starts the container
        return attachment | {"dns": cni_dns(self._require().host.pod_resolv)}

    async def cni_del(self, network: str, container_id: str, ifname: str) -> None:
        await self._kernel(self._cni().delete, network, container_id, ifname)
        self._require().registry.pods_changed()
        await self._require().registry.policy.local_pods_changed()

    async def cni_check(self, network: str, container_id: str, ifname: str, netns: str) -> dict[str, Any]:
        return await self._kernel(self._cni().check, network, container_id, ifname, netns)

    async def cni_gc(self, network: str, valid: list[tuple[str, str]]) -> list[str]:
        removed = await self._kernel(self._cni().gc, network, valid)
        self._require().registry.pods_changed()
        await self._require().registry.policy.local_pods_changed()
        return removed

    async def cni_list(self) -> list[dict[str, Any]]:
        return self._cni().list()

    async def cni_exec(self, env: dict[str, str], stdin: bytes, via: str | None = None) -> tuple[str, int] | None:
        return await handle_cni_call(env, stdin, self, via=via)


    # --- services (registry/) ------------------------------------------------------

    def _registry(self) -> ClusterRegistry:
        return self._require().registry

    async def service_add(self, name: str, selector: dict[str, str], ports: tuple[ServicePort, ...]) -> dict[str, Any]:
        running = self._require()
        spec = ServiceSpec(name, running.host.cluster_config.services.network_address, selector, ports)
        added = await trio.to_thread.run_sync(running.registry.store.add_service, spec,
                                              running.host.cluster_config.services)
        return self._registry().service_row(added)

    async def service_del(self, name: str) -> None:
        await trio.to_thread.run_sync(self._registry().store.delete_service, name)

    async def service_get(self, name: str) -> dict[str, Any]:
        spec = self._registry().view.services.get(name)
        if spec is None:
            raise NotFoundError(f"no service named {name}")
        return self._registry().service_row(spec)

    async def service_list(self) -> list[dict[str, Any]]:
        registry = self._registry()
        return [registry.service_row(registry.view.services[name]) for name in sorted(registry.view.services)]

    # --- network policy (policy/) ----------------------------------------------------

    def _check_policy_signature(self, name: str, doc: dict[str, Any] | None, signature: object) -> None:
        """Trust mode: refuse at once what no daemon would enforce (or, for a delete, obey)."""
        registry = self._registry()
        verify = registry.view.verify_policy
        if verify is None:
            return
        if signature is None:
            raise UsageError("this cluster enforces only policies signed by the cluster CA: add --ca-dir DIR")
        key = registry.policy_store.key(name)
        try:
            verify(key, doc, signature)
        except RecordError as exc:
            raise UsageError(f"{exc} (signed for another --etcd-prefix than {key.rsplit('/policies/', 1)[0]}?)") from None

    async def policy_apply(self, policy: Policy, warnings: list[str],
                           signature: dict[str, Any] | None = None) -> dict[str, Any]:
        self._check_policy_signature(policy.name, policy.to_doc(), signature)
        result = await trio.to_thread.run_sync(self._registry().policy_store.apply, policy, signature)
        return {"name": policy.name, "result": result, "warnings": warnings}

    async def policy_del(self, name: str, signature: dict[str, Any] | None = None) -> None:
        self._check_policy_signature(name, None, signature)
        store = self._registry().policy_store
        if signature is not None:  # a signed tombstone: daemons in trust mode obey only that
            await trio.to_thread.run_sync(store.tombstone, name, signature)
        else:
            await trio.to_thread.run_sync(store.delete, name)

    def _policy_row(self, policy: Policy) -> dict[str, Any]:
        pods = [p for p in self._registry().policy.pods() if policy.pod_selector.matches(p.labels)]
        return {"name": policy.name, "pod_selector": str(policy.pod_selector), "types": list(policy.types),
                "ingress_rules": len(policy.ingress), "egress_rules": len(policy.egress),
                "pods": sorted(f"{p.node}/{p.name}" for p in pods), "document": policy.to_doc()}

    async def policy_get(self, name: str) -> dict[str, Any]:
        policy = self._registry().view.policies.get(name)
        if policy is None:
            raise NotFoundError(f"no policy named {name}")
        return self._policy_row(policy)

    async def policy_list(self) -> list[dict[str, Any]]:
        policies = self._registry().view.policies
        return [self._policy_row(policies[name]) for name in sorted(policies)]

    async def policy_explain(self, src: str, dst: str, protocol: str, port: int | None) -> dict[str, Any]:
        enforcer = self._registry().policy
        policies = dict(self._registry().view.policies)
        source, target = enforcer.endpoint(src), enforcer.endpoint(dst)
        verdict = evaluate(policies.values(), source, target, protocol, port)
        return explain(policies, verdict, source, target, protocol, port)


def _lease_row(lease: Lease) -> dict[str, Any]:
    return {"node": lease.record.node, "subnet": str(lease.subnet), "public_ip": str(lease.record.public_ip),
            "backend": dict(lease.record.backend)}
