"""Policy records in etcd (pure).

    {prefix}/policies/<name>
        The canonical NetworkPolicy document (model.Policy.to_doc: apiVersion, kind,
        metadata.name, spec with explicit policyTypes), as JSON. No lease: a policy lives
        until `overlayctl policy del`.

What etcd returns is untrusted: parsed with the same strict parser as a user's document,
and the name inside must be the name in the key.
"""

from __future__ import annotations

import json

from overlayd.cluster.errors import RecordError
from overlayd.cluster.records import json_object_untrusted
from overlayd.policy.model import Policy, PolicyError, parse_policy_untrusted

MAX_POLICY_BYTES = 64 * 1024


def policy_json(policy: Policy) -> bytes:
    return json.dumps(policy.to_doc(), sort_keys=True, separators=(",", ":")).encode()


def parse_policy_record_untrusted(name: str, value: bytes) -> Policy:
    doc = json_object_untrusted(value, max_bytes=MAX_POLICY_BYTES, what="policy record")
    try:
        policy, _ = parse_policy_untrusted(doc)
    except PolicyError as exc:
        raise RecordError(f"policy record: {exc}") from None
    if policy.name != name:
        raise RecordError(f"policy record under {name[:70]!r} names another policy")
    return policy
