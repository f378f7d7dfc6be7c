"""The cluster registry on one host (trio): publish our pods, follow everyone's pods and the
services, and turn them into service rules (nftables) and names (cluster DNS).

Until the first listing, service rules come from the cache of the last run (cache.py), so
a restart leaves every VIP working.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any, NoReturn

import trio

from overlayd.cluster.etcd import EtcdClient
from overlayd.cni.service import CniService
from overlayd.health import Reporter
from overlayd.metrics import DaemonMetrics
from overlayd.nat.keeper import NatKeeper
from overlayd.pods.service import PodService
from overlayd.policy.running import PolicyEnforcer
from overlayd.policy.store import PolicyStore
from overlayd.registry import cache
from overlayd.registry.follow import Pulse, RegistryFollower
from overlayd.registry.publish import PodPublisher
from overlayd.registry.records import CNI_NAME_PREFIX, PodEntry, ServiceSpec
from overlayd.registry.store import PodEncoder, RegistryStore
from overlayd.registry.view import PodVerifier, PolicyVerifier, RegistryView, ServiceNat
from overlayd.statefile import StateError

log = logging.getLogger("overlayd")

NamesListener = Callable[[dict[str, IPv4Address], dict[str, IPv4Address]], None]


def own_pod_entries(node: str, pods: PodService, cni: CniService) -> list[PodEntry]:
    """This host's pods and CNI attachments as registry records (call where they are changed)."""
    entries = [PodEntry(pod.name, node, pod.ip, dict(pod.labels)) for pod in pods.list()]
    seen = set()
    for row in cni.list():  # one record per container: its first attachment
        name = CNI_NAME_PREFIX + row["container_id"]
        if name not in seen:
            seen.add(name)
            entries.append(PodEntry(name, node, ip_address(row["ip"]), {}, "cni"))
    return entries


class ClusterRegistry:
    def __init__(self, *, node: str, prefix: str, etcd: EtcdClient, nat: NatKeeper, state_dir: Path,
                 wanted: Callable[[], Awaitable[list[PodEntry]]], lease_id: Callable[[], int | None],
                 reporter: Reporter, disk: Callable[..., Awaitable[Any]], metrics: DaemonMetrics,
                 encode_pod: PodEncoder | None = None, verify_pod: PodVerifier | None = None,
                 verify_policy: PolicyVerifier | None = None) -> None:
        """encode_pod/verify_pod: the trust layer's signature and check of pod records (None: off);
        verify_policy: the cluster CA's check of policy records (policy/signing.py; None: off)."""
        self.store = RegistryStore(etcd, prefix, encode_pod)
        self.view = RegistryView(prefix, verify_pod, verify_policy)
        self._changed = Pulse()
        self._follower = RegistryFollower(self.store, self.view, self._changed, reporter)
        self.publisher = PodPublisher(node, self.store, self.view, wanted, lease_id, reporter)
        self._nat = nat
        self._state_dir = state_dir
        self._report = reporter
        self._disk = disk
        self._metrics = metrics
        self._cached = cache.load(state_dir)
        # Start-up programmed the cached rules (nat_keeper(..., services=cache)): equal rows change nothing.
        self._programmed: tuple[ServiceNat, ...] = self._cached
        self.names_listeners: list[NamesListener] = []
        nat.services = self.rows
        self.policy_store = PolicyStore(etcd, prefix)
        self.policy = PolicyEnforcer(node=node, view=self.view, ready=self.ready, nat=nat, state_dir=state_dir,
                                     wanted=wanted, reporter=reporter, disk=disk, metrics=metrics)

    @property
    def ready(self) -> trio.Event:
        return self._follower.ready

    def rows(self) -> tuple[ServiceNat, ...]:
        """The service rules wanted now: the registry's once listed, the cached ones before."""
        return self.view.service_nat() if self.ready.is_set() else self._cached

    def pods_changed(self) -> None:
        """Our pods or attachments changed (control socket): publish soon."""
        self.publisher.pulse.set()

    async def run(self) -> NoReturn:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follower.run)
            nursery.start_soon(self.publisher.run, self.ready)
            nursery.start_soon(self._follow_changes)
            nursery.start_soon(self.policy.run)
        raise AssertionError("unreachable")

    async def _follow_changes(self) -> NoReturn:
        while True:
            await self._changed.wait()
            self.publisher.pulse.set()  # a record of ours may have been deleted behind our back
            self._report_refused()
            pods, services = self.view.names()
            for listener in self.names_listeners:
                listener(pods, services)
            rows = self.rows()
            self._metrics.services.set(len(self.view.services))
            self._metrics.service_endpoints.set(sum(len(row.endpoints) for row in rows))
            table = self.policy.table()  # network policy (policy/running.py): written in the same rewrite
            if table != self.policy.programmed:
                await self.policy.prepare(table)
            if (rows != self._programmed or table != self.policy.programmed) and \
                    await self._nat.converge(full=False) is None:
                await self.policy.programmed_now(table)
                if rows == self._programmed:
                    continue
                self._programmed = rows
                self._metrics.service_rule_updates.inc()
                try:
                    await self._disk(cache.save, self._state_dir, rows)
                except (OSError, StateError) as exc:
                    log.warning("cannot save the service cache: %s", exc)

    def _report_refused(self) -> None:
        refused = self.view.refused
        self._metrics.registry_refused.set(len(refused))
        if refused:
            key, why = next(iter(sorted(refused.items())))
            self._report.fail("registry-records", f"{len(refused)} pod, service or policy record(s) refused, e.g. {key}: {why}")
        else:
            self._report.recover("registry-records")

    # --- answers for the control socket ------------------------------------------------

    def service_row(self, spec: ServiceSpec) -> dict[str, Any]:
        return spec.to_dict() | {"endpoints": [{"pod": pod.name, "node": pod.node, "ip": str(pod.ip)}
                                               for pod in self.view.endpoints(spec)]}
