"""Blocking etcd access for policy records (the layout is in records.py).

Any daemon's control socket may write them (`overlayctl policy apply` reaches one host);
every daemon follows them through the registry watch.
"""

from __future__ import annotations

from typing import Any

from overlayd.cluster.etcd import EtcdClient
from overlayd.errors import ConflictError, NotFoundError
from overlayd.policy.model import Policy
from overlayd.policy.records import policy_json, tombstone_json


class PolicyStore:
    def __init__(self, etcd: EtcdClient, prefix: str) -> None:
        self.etcd = etcd
        self.prefix = f"{prefix}/policies/"

    def key(self, name: str) -> str:
        return self.prefix + name

    def apply(self, policy: Policy, signature: dict[str, Any] | None = None) -> str:
        """Create or replace; "created", "configured" or "unchanged" (kubectl's words)."""
        key = self.prefix + policy.name
        value = policy_json(policy, signature)
        kv = self.etcd.get(key)
        if kv is not None and kv.value == value:
            return "unchanged"
        if not self.etcd.txn(f"apply policy {policy.name}", [(key, kv.mod_revision if kv else 0)], [(key, value, 0)]):
            raise ConflictError(f"policy {policy.name} changed while it was being applied; try again")
        return "configured" if kv is not None and b'"deleted":true' not in kv.value else "created"

    def tombstone(self, name: str, signature: dict[str, Any]) -> None:
        """Trust mode's delete: a CA-signed record saying the policy is gone (a deleted key is not)."""
        key = self.prefix + name
        kv = self.etcd.get(key)  # absent: deleted behind our back, and daemons still enforce it
        if kv is not None and b'"deleted":true' in kv.value:
            raise NotFoundError(f"no policy named {name}")
        revision = kv.mod_revision if kv is not None else 0
        if not self.etcd.txn(f"delete policy {name}", [(key, revision)], [(key, tombstone_json(name, signature), 0)]):
            raise ConflictError(f"policy {name} changed while it was being deleted; try again")

    def delete(self, name: str) -> None:
        key = self.prefix + name
        kv = self.etcd.get(key)
        if kv is None:
            raise NotFoundError(f"no policy named {name}")
        if not self.etcd.txn(f"delete policy {name}", [(key, kv.mod_revision)], deletes=[key]):
            raise ConflictError(f"policy {name} changed while it was being deleted; try again")
