"""Trust checks that need no etcd event: the revocation list, this host's own certificate,
and whether the cluster config is still one the CA signed (trio; see guard.py).

Certificates expire and get revoked while the records carrying them sit unchanged in
etcd, so with a trust anchor the daemon runs `TrustChecks.run` every recheck_interval
seconds; start-up runs the first two once, before the first listing, so a revoked host
never counts as a peer even for a moment.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from overlayd.cluster.client import ClusterClient
from overlayd.errors import ClusterError, ConfigError, NotFoundError
from overlayd.health import Reporter
from overlayd.trust.errors import UntrustedConfig
from overlayd.trust.guard import TrustGuard

log = logging.getLogger("overlayd")


class TrustChecks:
    def __init__(self, guard: TrustGuard, cluster: ClusterClient, reporter: Reporter,
                 note: Callable[[str], None]) -> None:
        self.guard = guard
        self._cluster = cluster
        self._report = reporter
        self._note = note  # a one-off problem: logged, kept as last_error

    async def refresh_revocations(self) -> None:
        try:
            kv = await self._cluster.read_key(self.guard.revocations.key)
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

    def check_own_certificate(self) -> None:
        problem = self.guard.own_problem()
        if problem is not None:
            self._report.fail("trust", problem)
        else:
            self._report.recover("trust")

    async def check_config(self) -> None:
        """Is the config in etcd (still) one the CA signed? Applied only at the next start either way."""
        try:
            await self._cluster.get_config()
        except UntrustedConfig as exc:
            self._report.fail("signed_config", f"{exc}: refused; running on the cluster config this host has")
            return
        except (ClusterError, NotFoundError, ConfigError):
            return  # not a trust matter, and never a reason to change anything while running
        self._report.recover("signed_config")

    async def run(self, interval: float, rescreen_peers: Callable[[], Awaitable[None]]) -> None:
        while True:
            await trio.sleep(interval)
            await self.refresh_revocations()
            await self.check_config()
            self.check_own_certificate()
            await rescreen_peers()
