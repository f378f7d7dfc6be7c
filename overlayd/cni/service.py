"""CNI attachments of this host: addresses from the pods' pool, kernel wiring, persisted.

The store is written before an answer leaves the daemon, so a restarted daemon
knows every attachment. Nothing here deletes an attachment on its own
initiative: only DEL and GC (the runtime's explicit orders) do. At start,
reconcile() keeps every stored attachment (repairing those whose namespace
still exists), finishes deleting the links of DELs a crash cut short (their
records are gone and the links detached), and leaves any other CNI link it
has no record of as it is, reported.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timezone
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from ipam.errors import InvalidState, OutOfAddresses
from ipam.pool import AddressPool
from overlayd.cni.records import Attachment, AttachmentKey, owner_of
from overlayd.cni.store import AttachmentStore
from overlayd.cni.wiring import CniWiring, Macs, cni_veth_name
from overlayd.errors import ConflictError, KernelError, NotFoundError
from overlayd.pods.records import format_time
from overlayd.statefile import StateError

IPAddress = IPv4Address | IPv6Address


@dataclass
class CniReconcileReport:
    kept: list[str] = field(default_factory=list)  # netns present, wiring repaired
    waiting: list[str] = field(default_factory=list)  # netns gone: kept until the runtime's DEL or GC
    failed: dict[str, str] = field(default_factory=dict)  # repair or address failed: key -> error
    unknown_links: list[str] = field(default_factory=list)  # CNI links of ours with no record: left alone
    finished_deletes: list[str] = field(default_factory=list)  # detached links of a DEL cut short: deleted


class CniService:
    """add / delete / check / gc / list; owns the wiring (close() closes it), shares the pod pool."""

    def __init__(self, wiring: CniWiring, store: AttachmentStore, pool: AddressPool, *,
                 on_count: Callable[[int], object] = lambda n: None) -> None:
        self._wiring = wiring
        self._store = store
        self._pool = pool
        self._on_count = on_count
        self.problems: list[str] = []
        self._attachments = self._load()

    def close(self) -> None:
        self._wiring.close()
        self._store.close()

    def add(self, network: str, container_id: str, ifname: str, netns: str) -> dict[str, Any]:
        key = (network, container_id, ifname)
        known = self._attachments.get(key)
        if known is not None:
            if str(known.netns) != netns:
                raise ConflictError(f"container {container_id} already has {ifname} on network {network} "
                                    f"(in {known.netns})")
            return self._describe(known, self._wiring.ensure(known.host_veth, known.netns, ifname, known.ip))
        owner = owner_of(key)
        try:
            ip = self._pool.allocate(owner)
        except OutOfAddresses as exc:
            raise ConflictError(str(exc)) from None
        config = self._wiring.config
        attachment = Attachment(network=network, container_id=container_id, ifname=ifname, netns=Path(netns), ip=ip,
                                host_veth=cni_veth_name(config.link_prefix, *key),
                                created=format_time(datetime.now(timezone.utc)))
        try:
            macs = self._wiring.attach(attachment.host_veth, attachment.netns, ifname, ip)
        except BaseException:
            self._pool.release(owner)
            raise
        self._attachments[key] = attachment
        try:
            self._store.added(attachment, self._attachments.values())
        except BaseException as exc:  # not persisted means not attached: a restart would not know it
            del self._attachments[key]
            self._pool.release(owner)
            try:
                self._wiring.detach(attachment.host_veth)
            except KernelError as also:
                exc.add_note(f"removing {attachment.host_veth} failed too: {also}")
            raise
        self._on_count(len(self._attachments))
        return self._describe(attachment, macs)

    def delete(self, network: str, container_id: str, ifname: str) -> None:
        """Idempotent: an unknown attachment, or one whose namespace is gone, is fine."""
        key = (network, container_id, ifname)
        attachment = self._attachments.pop(key, None)
        if attachment is None:
            return
        try:
            self._store.removed(key, self._attachments.values())
        except BaseException:  # still recorded, so still attached: the runtime's next DEL tries again
            self._attachments[key] = attachment
            raise
        self._pool.release(attachment.owner)
        self._on_count(len(self._attachments))
        self._wiring.detach(attachment.host_veth)

    def check(self, network: str, container_id: str, ifname: str, netns: str) -> dict[str, Any]:
        attachment = self._attachments.get((network, container_id, ifname))
        if attachment is None:
            raise NotFoundError(f"no attachment of container {container_id} ({ifname}) on network {network}")
        if str(attachment.netns) != netns:
            raise ConflictError(f"{ifname} of container {container_id} is in {attachment.netns}, not {netns}")
        problems = self._wiring.problems(attachment.host_veth, attachment.netns, ifname, attachment.ip)
        if problems:
            raise ConflictError("; ".join(problems))
        return self._describe(attachment, None)

    def gc(self, network: str, valid: Collection[tuple[str, str]]) -> list[str]:
        """Delete the attachments of `network` the runtime no longer lists; their keys."""
        keep = set(valid)
        stale = [a for a in self._attachments.values()
                 if a.network == network and (a.container_id, a.ifname) not in keep]
        for attachment in stale:
            self.delete(*attachment.key)
        return ["/".join(a.key) for a in stale]

    def list(self) -> list[dict[str, Any]]:
        return [self._attachments[key].to_dict() for key in sorted(self._attachments)]

    def reconcile(self) -> CniReconcileReport:
        """After a restart: every stored attachment stays; those whose netns exists are repaired."""
        report = CniReconcileReport()
        for key, attachment in sorted(self._attachments.items()):
            name = "/".join(key)
            try:
                self._pool.assign(attachment.owner, attachment.ip)
            except InvalidState as exc:
                report.failed[name] = f"its address: {exc}"
                continue
            if not self._wiring.netns_exists(attachment.netns):
                report.waiting.append(name)
                continue
            try:
                self._wiring.ensure(attachment.host_veth, attachment.netns, attachment.ifname, attachment.ip)
                report.kept.append(name)
            except KernelError as exc:
                report.failed[name] = str(exc)
        known = {a.host_veth for a in self._attachments.values()}
        for name, detached in sorted(self._wiring.cni_links().items()):
            if name in known:
                continue
            if detached:  # a DEL whose deletion a crash cut short: ours, and already given up
                self._wiring.detach(name)
                report.finished_deletes.append(name)
            else:
                report.unknown_links.append(name)
        self._on_count(len(self._attachments))
        return report

    def _describe(self, attachment: Attachment, macs: Macs | None) -> dict[str, Any]:
        config = self._wiring.config
        return attachment.to_dict() | {
            "prefixlen": config.prefixlen, "gateway": str(config.gateway), "mtu": config.mtu,
            "host_mac": macs.host if macs else None, "container_mac": macs.container if macs else None}

    def _load(self) -> dict[AttachmentKey, Attachment]:
        try:
            return self._store.load()
        except StateError as exc:
            aside = self._store.set_aside()
            self.problems.append(f"CNI attachment store {self._store.path}: {exc}; set aside as {aside}; "
                                 "attachments in the kernel are left as they are")
            return {}
