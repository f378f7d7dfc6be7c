"""state_dir/policies.json: the policies and the other hosts' pods last enforced, for the next start.

The truth is etcd. This file bridges a restart: start-up rewrites our nftables table before
the registry has been listed (or while etcd is away); without it every pod a policy isolates
would be open until then. A damaged file is skipped (policies come back with the first
listing) and never a reason to fail.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from overlayd.cluster.errors import RecordError
from overlayd.policy.model import Policy, PolicyError, parse_policy_untrusted
from overlayd.registry.records import PodEntry, parse_pod_untrusted
from overlayd.statefile import StateError, read_json, write_json_atomic

log = logging.getLogger("overlayd")

FILE_NAME = "policies.json"
MAX_POLICIES = 5_000
MAX_PODS = 100_000


def save(state_dir: Path, policies: list[Policy], pods: list[PodEntry],
         generations: dict[str, int] | None = None) -> None:
    """generations: trust mode, the newest signed generation accepted per policy name (tombstones too)."""
    write_json_atomic(state_dir / FILE_NAME, {"policies": [p.to_doc() for p in policies],
                                              "pods": [p.to_dict() for p in pods],
                                              "generations": dict(generations or {})})


def load_generations(state_dir: Path) -> dict[str, int]:
    """The generations of the last save; {} when there are none or the file is damaged."""
    try:
        doc = read_json(state_dir / FILE_NAME)
    except StateError:
        return {}
    found = doc.get("generations") if isinstance(doc, dict) else None
    if not isinstance(found, dict) or len(found) > MAX_POLICIES:
        return {}
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)}


def _load_untrusted(doc: Any) -> tuple[list[Policy], list[PodEntry]]:
    if not isinstance(doc, dict) or not isinstance(doc.get("policies"), list) or not isinstance(doc.get("pods"), list):
        raise RecordError("expected {policies: [...], pods: [...]}")
    if len(doc["policies"]) > MAX_POLICIES or len(doc["pods"]) > MAX_PODS:
        raise RecordError("too many entries")
    try:
        policies = [parse_policy_untrusted(item)[0] for item in doc["policies"]]
    except PolicyError as exc:
        raise RecordError(str(exc)) from None
    pods = []
    for item in doc["pods"]:
        if not isinstance(item, dict) or not isinstance(item.get("node"), str) or not isinstance(item.get("name"), str):
            raise RecordError("a pod must be an object with node and name")
        pods.append(parse_pod_untrusted(item["node"], item["name"], json.dumps(item).encode()))
    return policies, pods


def load(state_dir: Path) -> tuple[list[Policy], list[PodEntry]]:
    try:
        doc = read_json(state_dir / FILE_NAME)
    except StateError as exc:
        log.warning("%s; policies come back with the first registry listing", exc)
        return [], []
    if doc is None:
        return [], []
    try:
        return _load_untrusted(doc)
    except (RecordError, TypeError, ValueError) as exc:
        log.warning("%s: %s; policies come back with the first registry listing", state_dir / FILE_NAME, exc)
        return [], []
