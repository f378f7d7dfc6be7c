"""Keeping this host's subnet lease: renew it, and claim the same subnet again when it is lost (trio).

The keeper renews every TTL/3. When etcd does not answer it retries every second, well
inside the TTL, reporting the outage once (component "lease") instead of logging every
retry. When the lease is gone (expired while this host was cut off, revoked, or our key
deleted) it claims the *same* subnet again, never another one: the host's bridge and
pods are numbered in it, and announcing a second subnet would leave the first one used
by two hosts. If another host holds it meanwhile, the keeper writes nothing (this host
stops announcing) and reports the conflict (component "subnet") until the subnet is free.

It keeps a local estimate of when etcd drops the lease unless renewed, so `status` can
answer without asking etcd, which may be the thing that is down. The daemon gets its
keeper from ClusterClient.lease_keeper and reads `state` and `ttl_left()` for `status`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Literal, NoReturn, Protocol

import trio

from ipam.config import ClusterConfig
from overlayd.cluster.errors import LeaseLost, SubnetTaken
from overlayd.cluster.keys import IPNetwork
from overlayd.cluster.records import HostRecord, Lease
from overlayd.errors import ClusterError, ConflictError
from overlayd.health import LoggingReporter, Reporter

log = logging.getLogger(__name__)

RENEW_RETRY = 1.0  # after a failed renewal; a TTL holds several of these
CLAIM_MIN_BACKOFF = 0.5
CLAIM_MAX_BACKOFF = 2.0  # once etcd is back, the subnet is ours again within about this
CONFLICT_RETRY = 5.0  # how often to look whether a subnet held by another host is free again

LeaseState = Literal["held", "unconfirmed", "expired", "claiming", "conflict"]


class LeaseStore(Protocol):
    """The part of SubnetStore the keeper uses (blocking calls)."""

    lease_ttl: int

    def renew(self, lease: Lease) -> int: ...
    def reclaim(self, config: ClusterConfig, record: HostRecord, subnet: IPNetwork) -> Lease: ...


RunSync = Callable[..., Awaitable[Any]]
# Abandoned on cancel: a call into an unreachable etcd must not hold up the daemon's shutdown.
_in_thread: RunSync = partial(trio.to_thread.run_sync, abandon_on_cancel=True)


class LeaseKeeper:
    def __init__(self, store: LeaseStore, config: ClusterConfig, record: HostRecord, subnet: IPNetwork,
                 lease: Lease | None = None, *, reporter: Reporter | None = None,
                 run_sync: RunSync = _in_thread) -> None:
        """lease: the lease just acquired, or None to start by claiming `subnet` again (a host
        that came up on its saved state while etcd was away)."""
        if lease is not None and lease.subnet != subnet:
            raise ValueError(f"lease for {lease.subnet} given to the keeper of {subnet}")
        self._store = store
        self._config = config
        self.record = record
        self.subnet = subnet
        self.lease = lease
        self._report = reporter or LoggingReporter(log)
        self._run_sync = run_sync
        self._expires_at: float | None = None  # trio clock; None: no lease, or not running yet
        self._failing = False  # the last renewal failed
        self._conflict = False  # another host holds our subnet

    @property
    def state(self) -> LeaseState:
        if self.lease is None:
            return "conflict" if self._conflict else "claiming"
        if self._expires_at is not None and trio.current_time() >= self._expires_at:
            return "expired"  # as far as we can tell: etcd has not confirmed a renewal for a TTL
        return "unconfirmed" if self._failing else "held"

    def ttl_left(self) -> float | None:
        """Seconds until etcd drops the lease unless renewed (local estimate), None without a lease."""
        if self.lease is None or self._expires_at is None:
            return None
        return max(0.0, self._expires_at - trio.current_time())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Keep the lease forever; self.lease is always the one held now (None while claiming)."""
        interval = self._store.lease_ttl / 3
        if self.lease is not None:
            self._expires_at = trio.current_time() + self._store.lease_ttl
        task_status.started()
        delay = interval
        while True:
            if self.lease is None:
                await self._claim_again()
                delay = interval
            await trio.sleep(delay)
            delay = await self._renew(interval)

    async def _renew(self, interval: float) -> float:
        """One renewal; returns the delay before the next one."""
        assert self.lease is not None
        try:
            ttl = await self._run_sync(self._store.renew, self.lease)
        except LeaseLost as exc:
            log.warning("subnet %s: %s; claiming it again", self.subnet, exc)
            self.lease, self._expires_at = None, None
            return 0.0
        except ClusterError as exc:
            self._failing = True
            self._report.fail("lease", f"cannot renew the lease on {self.subnet}: {exc}")
            return min(RENEW_RETRY, interval)
        self._renewed(ttl)
        return interval

    def _renewed(self, ttl: int) -> None:
        self._expires_at = trio.current_time() + ttl
        self._failing = False
        self._report.recover("lease")

    async def _claim_again(self) -> None:
        backoff = CLAIM_MIN_BACKOFF
        while True:
            try:
                lease = await self._run_sync(self._store.reclaim, self._config, self.record, self.subnet)
            except SubnetTaken as exc:
                self._conflict = True
                self._report.recover("lease")  # etcd answered; what is wrong now is the conflict
                self._report.fail("subnet", f"{exc}: this host stopped announcing it, so its pods are "
                                            "unreachable from other hosts until the subnet is free again "
                                            "(or restart overlayd with --renumber to move this host to a new subnet)")
                await trio.sleep(CONFLICT_RETRY)
                continue
            except (ClusterError, ConflictError) as exc:
                self._report.fail("lease", f"cannot claim subnet {self.subnet} again: {exc}")
                await trio.sleep(backoff)
                backoff = min(backoff * 2, CLAIM_MAX_BACKOFF)
                continue
            self.lease, self._conflict = lease, False
            self._renewed(self._store.lease_ttl)
            self._report.recover("subnet")
            log.info("holding subnet %s again (etcd lease %x)", self.subnet, lease.lease_id or 0)
            return
