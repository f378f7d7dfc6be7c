"""Policy records in etcd (pure).

    {prefix}/policies/<name>
        The canonical NetworkPolicy document (model.Policy.to_doc: apiVersion, kind,
        metadata.name, spec with explicit policyTypes), as JSON. No lease: a policy lives
        until `overlayctl policy del`.

    In trust mode the record also has a "signature" (policy/signing.py), and `policy del`
    leaves a signed tombstone, {"apiVersion", "kind", "metadata": {"name"}, "deleted": true,
    "signature"}, which every reader takes as "no such policy".

What etcd returns is untrusted: parsed with the same strict parser as a user's document,
and the name inside must be the name in the key.
"""

from __future__ import annotations

import json
from typing import Any

from overlayd.cluster.errors import RecordError
from overlayd.cluster.records import json_object_untrusted
from overlayd.policy.model import API_VERSION, KIND, Policy, PolicyError, parse_policy_untrusted

MAX_POLICY_BYTES = 64 * 1024


def policy_json(policy: Policy, signature: dict[str, Any] | None = None) -> bytes:
    doc = policy.to_doc() | ({"signature": signature} if signature is not None else {})
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def tombstone_json(name: str, signature: dict[str, Any]) -> bytes:
    doc = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "deleted": True,
           "signature": signature}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def parse_signed_record_untrusted(name: str, value: bytes) -> tuple[Policy | None, object]:
    """(policy, or None for a tombstone; the record's "signature" field, or None)."""
    doc = json_object_untrusted(value, max_bytes=MAX_POLICY_BYTES, what="policy record")
    signature = doc.pop("signature", None)
    if doc.get("deleted") is True:
        metadata = doc.get("metadata")
        if not isinstance(metadata, dict) or metadata.get("name") != name:
            raise RecordError(f"policy tombstone under {name[:70]!r} names another policy")
        return None, signature
    try:
        policy, _ = parse_policy_untrusted(doc)
    except PolicyError as exc:
        raise RecordError(f"policy record: {exc}") from None
    if policy.name != name:
        raise RecordError(f"policy record under {name[:70]!r} names another policy")
    return policy, signature


def parse_policy_record_untrusted(name: str, value: bytes) -> Policy:
    doc = json_object_untrusted(value, max_bytes=MAX_POLICY_BYTES, what="policy record")
    try:
        policy, _ = parse_policy_untrusted(doc)
    except PolicyError as exc:
        raise RecordError(f"policy record: {exc}") from None
    if policy.name != name:
        raise RecordError(f"policy record under {name[:70]!r} names another policy")
    return policy
