"""Pods of this host: names, addresses and namespaces kept consistent, and persisted.

Every change is on disk before the call returns, so a restarted daemon keeps
its pods and their addresses; reconcile() then makes the kernel and the store
agree again. Synchronous; the daemon calls it from one worker thread at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from ipaddress import IPv4Network, IPv6Network

from ipam.errors import InvalidState, OutOfAddresses, SubnetMismatch
from ipam.pool import AddressPool
from overlayd.errors import ConfigError, ConflictError, KernelError, NotFoundError, OverlaydError
from overlayd.pods.manager import PodManager
from overlayd.pods.names import validate_labels, validate_pod_name
from overlayd.pods.records import PodInfo, PodRecord, format_time
from overlayd.pods.store import PodStore
from overlayd.statefile import StateError

IPNetwork = IPv4Network | IPv6Network


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ReconcileReport:
    kept: list[str]  # in the store and in the kernel (network re-ensured)
    dropped: list[str]  # in the store, but their namespaces were gone
    removed: list[str]  # namespaces of ours that no stored pod owns
    stray_links: list[str]  # host veths of ours that no stored pod owns
    failed: dict[str, str]  # kept pods whose repair failed: name -> error


class PodService:
    """add / delete / get / list pods, backed by a PodManager, an AddressPool and a PodStore.

    The service owns the manager and the store it is given: close() closes them.
    """

    def __init__(
        self,
        manager: PodManager,
        store: PodStore,
        subnet: IPNetwork,
        node: str,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._manager = manager
        self._store = store
        self._node = node
        self._clock = clock
        config = manager.config
        if (config.gateway, config.prefixlen) != (AddressPool(subnet).gateway, subnet.prefixlen):
            raise ConfigError(
                f"pod gateway {config.gateway}/{config.prefixlen} does not match subnet {subnet} "
                f"(expected {AddressPool(subnet).gateway}/{subnet.prefixlen})"
            )
        self._records, self._pool = self._load(subnet)

    @property
    def pool(self) -> AddressPool:
        return self._pool

    def close(self) -> None:
        """Finish pending writes and release the kernel resources (idempotent)."""
        self._store.close()
        self._manager.close()

    def add(self, name: str, labels: Mapping[str, str]) -> PodInfo:
        """Create a pod with the next free address; ConflictError if the name is taken."""
        validate_pod_name(name)
        validate_labels(labels)
        if name in self._records:
            raise ConflictError(f"pod {name} already exists")
        try:
            ip = self._pool.allocate(name)
        except OutOfAddresses as exc:
            raise ConflictError(str(exc)) from None
        self._records[name] = PodRecord(
            name=name, ip=ip, node=self._node, created=format_time(self._clock()), labels=labels
        )
        # Written ahead, while the kernel work runs: should we crash in between,
        # reconcile() drops a stored pod whose namespaces are missing or incomplete.
        saving: list[Future[None]] = []
        try:
            namespaces = self._manager.create(name, ip, files_made=lambda: saving.append(self._save_async()))
        except BaseException as exc:
            self._forget(name)
            if saving:  # the pod reached the disk: write it off again
                _settle(saving[0])
                try:
                    self._save()
                except OverlaydError as also:
                    exc.add_note(f"saving the pod store failed too: {also}")
            raise
        try:
            saving[0].result()
        except BaseException as exc:
            # Not persisted means not created: a restarted daemon would not know this pod.
            self._forget(name)
            try:
                self._manager.delete(name)
            except KernelError as also:
                exc.add_note(f"removing pod {name} failed too: {also}")
            raise
        return PodInfo.of(self._records[name], namespaces)

    def delete(self, name: str) -> None:
        """Remove a pod and free its address; NotFoundError if there is no such pod."""
        validate_pod_name(name)
        if name not in self._records:
            raise NotFoundError(f"pod {name} does not exist")
        self._forget(name)
        # Leftovers of a delete that fails or is cut short are strays to reconcile().
        saving = self._save_async()
        try:
            self._manager.delete(name)
        finally:
            saving.result()

    def get(self, name: str) -> PodInfo:
        validate_pod_name(name)
        record = self._records.get(name)
        if record is None:
            raise NotFoundError(f"pod {name} does not exist")
        return PodInfo.of(record, self._manager.paths(name))

    def list(self) -> list[PodInfo]:
        return [self.get(name) for name in sorted(self._records)]

    def reconcile(self) -> ReconcileReport:
        """Make kernel and store agree after a restart (idempotent, safe to run any time).

        Stored pods whose namespaces exist are kept and their network repaired;
        stored pods whose namespaces are gone are dropped and their addresses freed;
        namespaces and host veths of ours that no stored pod owns are removed.
        """
        kept: list[str] = []
        dropped: list[str] = []
        failed: dict[str, str] = {}
        for name, record in sorted(self._records.items()):
            if not self._manager.exists(name):
                dropped.append(name)
                self._forget(name)
                continue
            kept.append(name)
            try:
                self._manager.ensure(name, record.ip)
            except KernelError as exc:
                failed[name] = str(exc)
        removed = sorted(self._manager.list_kernel_pods() - self._records.keys())
        for name in removed:
            self._manager.delete(name)
        for owner in self._pool.allocations.keys() - self._records.keys():
            self._pool.release(owner)
        stray_links = self._manager.remove_stray_links(keep=self._records.keys())
        self._save()
        return ReconcileReport(kept=kept, dropped=dropped, removed=removed, stray_links=stray_links, failed=failed)

    def _load(self, subnet: IPNetwork) -> tuple[dict[str, PodRecord], AddressPool]:
        stored = self._store.load()
        if stored is None:
            return {}, AddressPool(subnet)
        try:
            pool = AddressPool(subnet, state=stored.pool)
        except SubnetMismatch:
            # The host got another subnet: the old pods' addresses are void; reconcile removes them.
            return {}, AddressPool(subnet)
        except (InvalidState, ValueError) as exc:
            raise StateError(str(self._store.path), f"corrupt address pool: {exc}") from None
        for name, record in stored.pods.items():
            if pool.lookup(name) != record.ip:
                raise StateError(
                    str(self._store.path), f"corrupt: pod {name} has {record.ip} but the pool says {pool.lookup(name)}"
                )
        return dict(stored.pods), pool

    def _forget(self, name: str) -> None:
        del self._records[name]
        self._pool.release(name)

    def _save(self) -> None:
        self._store.save(self._records, self._pool.to_dict())

    def _save_async(self) -> Future[None]:
        return self._store.save_async(self._records, self._pool.to_dict())


def _settle(future: Future[None]) -> None:
    """Wait for a write whose outcome no longer matters (a newer one follows)."""
    try:
        future.result()
    except OverlaydError:
        pass
