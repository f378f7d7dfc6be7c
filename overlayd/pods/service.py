"""Pods of this host: names, addresses and namespaces kept consistent, and persisted.

Every change is on disk before the call returns, so a restarted daemon keeps
its pods and their addresses; reconcile() then makes the kernel and the store
agree again. Synchronous; the daemon calls it from one worker thread at a time.

The kernel is the truth and the store a cache of it: only delete() removes a pod.
A damaged store is set aside and rebuilt from the kernel (each pod keeps the address
its eth0 has; labels come from the spare copy beside its namespaces), and a pod that
cannot be taken back (its address is outside this host's subnet, or taken) is left
running as it is and reported, never removed on the daemon's own initiative.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from ipam.errors import InvalidState, OutOfAddresses, SubnetMismatch
from ipam.pool import AddressPool
from overlayd.errors import ConfigError, ConflictError, KernelError, NotFoundError, OverlaydError, UsageError
from overlayd.nat.ports import Publication, find_clash
from overlayd.nat.ruleset import Published
from overlayd.pods.manager import PodManager
from overlayd.pods.names import validate_labels, validate_pod_name
from overlayd.pods.records import PodInfo, PodRecord, format_time
from overlayd.pods.store import PodStore
from overlayd.statefile import StateError

IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ReconcileReport:
    kept: list[str]  # in the store and in the kernel (network re-ensured)
    dropped: list[str]  # in the store, but their namespaces were gone
    adopted: list[str]  # complete pods in the kernel the store did not know: taken back as they are
    untouched: dict[str, str]  # complete pods that could not be taken back, left running: name -> why
    removed: list[str]  # half-made pods (a create cut short) no stored pod owns, and with renumber, untouched ones
    stray_links: list[str]  # host veths of ours that no pod owns
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
        self.problems: list[str] = []  # what loading the store found damaged (and set aside)
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

    def add(self, name: str, labels: Mapping[str, str], ports: Sequence[Publication] = ()) -> PodInfo:
        """Create a pod with the next free address; ConflictError if the name is taken,
        UsageError if one of its published host ports is another pod's."""
        validate_pod_name(name)
        validate_labels(labels)
        if name in self._records:
            raise ConflictError(f"pod {name} already exists")
        self._check_ports(ports)
        try:
            ip = self._pool.allocate(name)
        except OutOfAddresses as exc:
            raise ConflictError(str(exc)) from None
        self._records[name] = PodRecord(
            name=name, ip=ip, node=self._node, created=format_time(self._clock()), labels=labels, ports=tuple(ports)
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
            self._manager.write_meta(name, self._records[name].to_dict())
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

    # --- published ports (nat/): kept with the pod, turned into DNAT rules by the NAT keeper ---

    def publications(self) -> tuple[Published, ...]:
        return tuple(Published(record.ip, port) for record in self._records.values() for port in record.ports)

    def publishes(self, name: str) -> bool:
        record = self._records.get(name)
        return record is not None and bool(record.ports)

    def _check_ports(self, ports: Sequence[Publication]) -> None:
        if ports and self._pool.subnet.version != 4:
            raise UsageError("published ports need an IPv4 pod network")
        clash = find_clash(ports, {name: record.ports for name, record in self._records.items()})
        if clash is not None:
            raise UsageError(clash)

    def reconcile(self, *, renumbered: bool = False) -> ReconcileReport:
        """Make kernel and store agree after a restart (idempotent, safe to run any time).

        Stored pods whose namespaces exist are kept and their network repaired; stored pods
        whose namespaces are gone are dropped and their addresses freed; complete pods in the
        kernel that the store does not know are adopted with the address they have, or left
        untouched when that address is not ours to give. Only half-made pods (namespace files
        of a create cut short) are removed, and, when the operator renumbered this host
        (`renumbered`), the pods numbered in its old subnet.
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
        adopted: list[str] = []
        untouched: dict[str, str] = {}
        removed: list[str] = []
        for name in sorted(self._manager.list_kernel_pods() - self._records.keys()):
            why = self._adopt(name) if self._manager.exists(name) else "half-made"
            if name in self._records:
                adopted.append(name)
            elif why == "half-made" or renumbered:
                removed.append(name)
                self._manager.delete(name)
            else:
                untouched[name] = why
        for owner in self._pool.allocations.keys() - self._records.keys():
            self._pool.release(owner)
        stray_links = self._manager.remove_stray_links(keep=self._records.keys() | untouched.keys())
        self._save()
        return ReconcileReport(kept=kept, dropped=dropped, adopted=adopted, untouched=untouched, removed=removed,
                               stray_links=stray_links, failed=failed)

    def _adopt(self, name: str) -> str | None:
        """Take a complete pod found in the kernel back into the store; None, or why it cannot be."""
        try:
            ip = self._manager.address(name)
        except KernelError as exc:
            return f"cannot read its address: {exc}"
        if ip is None:
            return f"its eth0 has no single address in {self._pool.subnet}"
        try:
            self._pool.assign(name, ip)
        except InvalidState as exc:
            return str(exc)
        labels, created = _meta_untrusted(self._manager.read_meta(name), name, ip)
        self._records[name] = PodRecord(name=name, ip=ip, node=self._node,
                                        created=created or format_time(self._clock()), labels=labels,
                                        ports=self._adopted_ports(self._manager.read_meta(name), name, ip))
        return None

    def _adopted_ports(self, meta: object, name: str, ip: IPAddress) -> tuple[Publication, ...]:
        """The published ports in an adopted pod's spare copy, unless another pod has them now."""
        try:
            record = PodRecord.from_dict_untrusted(meta)
            if record.name == name and record.ip == ip:
                self._check_ports(record.ports)
                return record.ports
        except (ValueError, UsageError):
            pass
        return ()

    def _load(self, subnet: IPNetwork) -> tuple[dict[str, PodRecord], AddressPool]:
        """The stored pods; a damaged store is set aside (reconcile() then adopts from the kernel)."""
        try:
            stored = self._store.load()
            if stored is None:
                return {}, AddressPool(subnet)
            pool = AddressPool(subnet, state=stored.pool)
            for name, record in stored.pods.items():
                if pool.lookup(name) != record.ip:
                    raise InvalidState(f"pod {name} has {record.ip} but the pool says {pool.lookup(name)}")
            return dict(stored.pods), pool
        except SubnetMismatch as exc:
            problem = f"its pods were numbered in another subnet ({exc})"
        except (StateError, InvalidState, ValueError) as exc:
            problem = str(exc)
        aside = self._store.set_aside()
        self.problems.append(f"pod store {self._store.path}: {problem}; set aside as {aside}; "
                             "pods are taken back from the kernel")
        return {}, AddressPool(subnet)

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


def _meta_untrusted(meta: object, name: str, ip: IPAddress) -> tuple[Mapping[str, str], str | None]:
    """Labels and creation time from a pod's spare copy, if it is intact and about this pod."""
    try:
        record = PodRecord.from_dict_untrusted(meta)
    except ValueError:
        return {}, None
    if record.name != name or record.ip != ip:
        return {}, None
    return record.labels, record.created
