"""Keeps the kernel's NAT rules matching the pods (trio): at start, after a pod with published
ports comes or goes, and every RESYNC_INTERVAL (someone may have flushed our table, or Docker
rebuilt its forward chain without our accept rules).

A failure is reported as the "nat" health problem and retried at the next resync; the
daemon goes on. Nothing is removed on shutdown: pod traffic keeps flowing while the daemon
restarts, and the next start adopts the table as it is when it matches.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import trio

from overlayd.backend.host import PROC_SYS, ensure_sysctl
from overlayd.errors import OverlaydError
from overlayd.health import Reporter
from overlayd.nat import nft
from overlayd.nat.ruleset import IPNetwork, NatSpec, Published
from overlayd.registry.view import ServiceNat

if TYPE_CHECKING:
    from overlayd.config import DaemonConfig
    from overlayd.policy.counters import PolicyCounters
    from overlayd.policy.nft import PolicyTable

log = logging.getLogger("overlayd")

RESYNC_INTERVAL = 30.0
Runner = Callable[..., Awaitable[Any]]


@dataclass
class NatKeeper:
    spec: NatSpec  # published is replaced by each converge
    publications: Callable[[], tuple[Published, ...]]  # read under the kernel runner, like the pod service
    kernel: Runner
    reporter: Reporter
    # Service VIPs from the registry view, read in the trio thread (where the view changes).
    services: Callable[[], tuple[ServiceNat, ...]] = tuple
    # Network policy rules (policy/running.py), also read in the trio thread; None: no policy.
    policy: Callable[[], PolicyTable | None] = lambda: None
    # Policy drop counters (policy/counters.py): a rewrite starts them at zero, so they are read first.
    counters: PolicyCounters | None = None

    def __post_init__(self) -> None:
        self._lock = trio.Lock()
        self.changes = 0  # times the table was rewritten (0 after a start that adopted it)
        self._checked = False  # a full converge succeeded: the table is ours and the holes are in place

    async def converge(self, *, full: bool = True) -> str | None:
        """Write the table if it differs; the problem when it could not be written (else None).

        full=False, for a change of our own rules (service endpoints): once a full converge has
        succeeded, the table is rewritten without first reading it and the forward chains back
        (at 1,000 endpoints those reads cost more than the write); the periodic resync stays full."""
        async with self._lock:
            services = self.services()
            policy = self.policy()
            try:
                if not full and self._checked:
                    await self.kernel(self._write_now, services, policy)
                    self.changes += 1
                    self.reporter.recover("nat")
                    return None
                result = await self.kernel(self._converge_now, services, policy)
            except OverlaydError as exc:
                self.reporter.fail("nat", f"nftables: {exc}")
                return str(exc)
            self.reporter.recover("nat")
            self._checked = True
            if result.replaced:
                self.changes += 1
                log.info("nftables table inet %s written (%d published ports, %d service ports)", self.spec.table,
                         len(self.spec.published), len(self.spec.services))
            for command in result.holes:
                log.info("nftables: %s", command)
            return None

    def _write_now(self, services: tuple[ServiceNat, ...], policy: PolicyTable | None = None) -> None:
        counts = self.counters.read(self.spec) if self.counters else None
        self.spec = replace(self.spec, published=self.publications(), services=services, policy=policy)
        nft.write_table(self.spec)
        if self.counters:
            self.counters.rewritten(counts)

    def _converge_now(self, services: tuple[ServiceNat, ...], policy: PolicyTable | None = None) -> nft.NatResult:
        counts = self.counters.read(self.spec) if self.counters else None
        self.spec = replace(self.spec, published=self.publications(), services=services, policy=policy)
        if self.spec.network.version == 4:  # 127.0.0.1:<published> is DNATed out of the bridge (see ruleset.py)
            ensure_sysctl(PROC_SYS / f"net/ipv4/conf/{self.spec.bridge}/route_localnet", "1")
        result = nft.converge(self.spec)
        if self.counters:
            (self.counters.rewritten if result.replaced else self.counters.seen)(counts)
        return result

    async def resync_periodically(self) -> None:
        while True:
            await trio.sleep(RESYNC_INTERVAL)
            await self.converge()


def nat_keeper(config: DaemonConfig, network: IPNetwork, subnet: IPNetwork,
               publications: Callable[[], tuple[Published, ...]], kernel: Runner, reporter: Reporter,
               services: tuple[ServiceNat, ...] = ()) -> NatKeeper:
    """services: the service rules to keep until the registry takes over (its cache)."""
    spec = NatSpec(table=config.nft_table, network=network, subnet=subnet, bridge=config.bridge_name,
                   ip_masq=config.ip_masq)
    return NatKeeper(spec, publications, kernel, reporter, lambda: services)
