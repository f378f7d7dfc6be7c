"""Network policy on one host (trio): keep the policy rules of our nftables table in step with
the policies and pods of the registry, and with this host's own pods.

Inputs: the policies and the other hosts' pods come from the registry view (etcd), or from
the cache of the last run until the registry has been listed; this host's pods come from
the pod service itself, read again whenever a pod or CNI attachment is added or deleted, and
the rules are rewritten before the add returns (Answers.pod_add, cni_add), so a new pod is
covered before its first packet. A pod IP of this host's subnet that the rules do not know
yet is dropped meanwhile (nft.py), so there is no gap either way.

Same-host pod-to-pod traffic is bridged, and reaches the inet forward hook only through
br_netfilter: while policies are in force we turn on `nf_call_iptables` on our bridge (only
ours; the netns-wide sysctl stays as it is), and off again when the last one goes, and
report the `policy` health problem when br_netfilter is not loaded at all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any, NoReturn

import trio

from overlayd.backend.host import PROC_SYS
from overlayd.errors import NotFoundError, UsageError
from overlayd.health import Reporter
from overlayd.metrics import DaemonMetrics
from overlayd.nat.keeper import NatKeeper
from overlayd.policy import cache, nft
from overlayd.policy.counters import PolicyCounters
from overlayd.policy.model import Policy
from overlayd.policy.nft import PolicyTable
from overlayd.policy.reach import Endpoint
from overlayd.registry.records import PodEntry
from overlayd.registry.view import RegistryView
from overlayd.statefile import StateError

log = logging.getLogger("overlayd")

COUNTER_INTERVAL = 10.0  # seconds between reads of the drop counters
CACHE_DELAY = 1.0  # seconds from a change of the rules to the cache on disk
Runner = Callable[..., Awaitable[Any]]


def startup_rules(node: str, subnet: Any, state_dir: Path, local: list[PodEntry]) -> Callable[[], PolicyTable | None]:
    """The policy rules to program at start, before the registry is listed: from the cache."""
    policies, remote = cache.load(state_dir)
    table = nft.build(policies, nft.pod_ips([p for p in remote if p.node != node] + local, node), subnet)
    return lambda: table


def bridge_filtering(bridge: str, on: bool) -> str | None:
    """Whether bridged traffic between pods passes the inet hooks, through our bridge's own
    nf_call_iptables (blocking); the problem, or None. Off again without policies: br_netfilter
    costs every frame through the bridge a detour through the IP hooks."""
    if not os.path.isdir(PROC_SYS / "net/bridge"):
        return ("br_netfilter is not loaded: traffic between pods of this host is not filtered by policy "
                "(`modprobe br_netfilter`)") if on else None
    from pyroute2 import IPRoute  # only here: the daemon's netlink lives in the kernel runner

    try:
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=bridge)
            if not index:
                return f"bridge {bridge} not found"
            if _nf_call_iptables(ipr, index[0]) == on:
                return None  # as wanted already: a start without policies changes nothing in the kernel
            ipr.link("set", index=index[0], kind="bridge", br_nf_call_iptables=1 if on else 0)
    except Exception as exc:  # noqa: BLE001  (pyroute2 raises NetlinkError and OSErrors)
        return f"cannot turn {'on' if on else 'off'} nf_call_iptables on {bridge}: {exc}"
    return None


def _nf_call_iptables(ipr: Any, index: int) -> bool | None:
    """Our bridge's nf_call_iptables as the kernel reports it (None: unknown)."""
    for link in ipr.get_links(index):
        info = link.get_attr("IFLA_LINKINFO")
        data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
        value = data.get_attr("IFLA_BR_NF_CALL_IPTABLES") if data is not None else None
        return None if value is None else bool(value)
    return None


class PolicyEnforcer:
    def __init__(self, *, node: str, view: RegistryView, ready: trio.Event, nat: NatKeeper, state_dir: Path,
                 wanted: Callable[[], Awaitable[list[PodEntry]]], reporter: Reporter, disk: Runner,
                 metrics: DaemonMetrics) -> None:
        self._node = node
        self._view = view
        self._ready = ready
        self._nat = nat
        self._state_dir = state_dir
        self._wanted = wanted
        self._report = reporter
        self._disk = disk
        self._metrics = metrics
        self._cached_policies, cached_pods = cache.load(state_dir)
        self._cached_pods = [p for p in cached_pods if p.node != node]
        if view.verify_policy is not None:  # trust mode: what the last run accepted stays until signed otherwise
            view.seed_policies(self._cached_policies, cache.load_generations(state_dir))
        self._local: list[PodEntry] | None = None  # this host's pods, once read
        self._local_reads = 0
        self._startup = nat.policy  # start-up's rules (from the cache) until then
        self.programmed: PolicyTable | None = self._startup()
        self._saved: tuple[Any, ...] | None = None
        self._dirty = False
        self._saved_generations: dict[str, int] = {}
        self._bridge_on: bool | None = None  # our bridge's nf_call_iptables as last set
        self._built: tuple[tuple[Any, ...] | None, PolicyTable | None] = (None, None)
        self.counters = PolicyCounters(nat.spec.table)
        nat.policy = self.table
        nat.counters = self.counters
        metrics.set_policy_drops_source(self.drops)

    # --- what is wanted ------------------------------------------------------------

    def inputs(self) -> tuple[list[Policy], list[PodEntry]]:
        """(policies, other hosts' pods): the registry's once listed, the cached ones before."""
        if not self._ready.is_set():
            return self._cached_policies, self._cached_pods
        remote = [pod for (node, _), pod in self._view.pods.items() if node != self._node]
        return list(self._view.policies.values()), remote

    def table(self) -> PolicyTable | None:
        if self._local is None:
            return self._startup()
        key = (self._ready.is_set(), self._view.generation, self._local_reads)
        if key != self._built[0]:
            policies, remote = self.inputs()
            self._built = (key, nft.build(policies, nft.pod_ips(remote + self._local, self._node),
                                          self._nat.spec.subnet))
        return self._built[1]

    def pods(self) -> list[PodEntry]:
        """Every pod known: this host's (from the pod service) and the others' (registry)."""
        _, remote = self.inputs()
        return remote + (self._local or [])

    def endpoint(self, text: str) -> Endpoint:
        """A pod by name (NAME, or HOST/NAME when two hosts have one of that name) or an address."""
        pods = self.pods()
        node, slash, name = text.rpartition("/")
        try:
            ip = ip_address(text)
        except ValueError:
            found = [p for p in pods if p.name == name and (not slash or p.node == node)]
            if not found:
                raise NotFoundError(f"no pod named {text} in the registry") from None
            if len(found) > 1:
                raise UsageError(f"pods named {name} run on {', '.join(sorted(p.node for p in found))}: "
                                 f"say HOST/{name}") from None
            pod = found[0]
            return Endpoint(pod.ip, dict(pod.labels), pod.name, pod.node)
        for pod in pods:
            if pod.ip == ip:
                return Endpoint(pod.ip, dict(pod.labels), pod.name, pod.node)
        return Endpoint(ip)

    def drops(self) -> tuple[dict[tuple[str, str], int], int] | None:
        """Packets dropped per (policy, direction) and for unknown local addresses (metrics scrape)."""
        totals = self.counters.totals()
        if not totals:
            return None
        per_policy = {}
        for name, packets in totals.items():
            if name.startswith(("pi_", "pe_")):
                per_policy[(name[3:], "ingress" if name.startswith("pi_") else "egress")] = packets
        return per_policy, totals.get(nft.UNKNOWN_COUNTER, 0)

    # --- programming ---------------------------------------------------------------

    async def local_pods_changed(self) -> None:
        """This host's pods changed (control socket): the rules follow before the caller returns."""
        self._local = await self._wanted()
        self._local_reads += 1
        await self.enforce()

    async def enforce(self) -> None:
        """Rewrite the table when the policy rules wanted differ from those programmed."""
        table = self.table()
        if table == self.programmed:
            return
        await self.prepare(table)
        if await self._nat.converge(full=False) is None:
            await self.programmed_now(table)

    async def prepare(self, table: PolicyTable | None) -> None:
        """Before the rules: bridged pod traffic reaches the inet hooks while there are policies, only then."""
        on = table is not None
        if on == self._bridge_on:
            return
        problem = await self._nat.kernel(bridge_filtering, self._nat.spec.bridge, on)
        self._bridge_on = on
        if problem is not None:
            self._report.fail("policy", problem)
        else:
            self._report.recover("policy")

    async def programmed_now(self, table: PolicyTable | None) -> None:
        """`table` is in the kernel: remember it and count; the cache is saved soon after (run)."""
        if table != self.programmed:
            self._metrics.policy_rule_updates.inc()
            self._dirty = True
        self.programmed = table
        self.counters.names = table.counters if table is not None else ()
        self._metrics.policies.set(len(self.inputs()[0]))

    async def _save_cache(self) -> None:
        """The inputs of the rules in force, for the next start; off the path of the rewrite itself
        (three lab hosts share two cores: a save per change would slow the others' rewrites)."""
        changed = self._dirty or self._view.policy_generations != self._saved_generations
        if not changed or not self._ready.is_set():
            return
        self._dirty = False
        policies, remote = self.inputs()
        generations = dict(self._view.policy_generations)
        key = (tuple(sorted(policies, key=lambda p: p.name)), tuple(sorted(generations.items())),
               tuple(sorted((p.node, p.name, str(p.ip), tuple(sorted(p.labels.items()))) for p in remote)))
        if key == self._saved:
            return
        try:
            await self._disk(cache.save, self._state_dir, sorted(policies, key=lambda p: p.name), remote, generations)
            self._saved = key
            self._saved_generations = generations
        except (OSError, StateError) as exc:
            log.warning("cannot save the policy cache: %s", exc)
            self._dirty = True

    async def run(self) -> NoReturn:
        await self.prepare(self.programmed)  # start-up's rules (cache) are in force already
        await self.local_pods_changed()
        last_read = trio.current_time()
        while True:
            await trio.sleep(CACHE_DELAY)
            await self._save_cache()
            if trio.current_time() - last_read >= COUNTER_INTERVAL:
                await self._nat.kernel(self._read_counters)
                last_read = trio.current_time()

    def _read_counters(self) -> None:  # in the kernel runner, as the rewrites: never between a read and its use
        self.counters.seen(self.counters.read(self._nat.spec))

