"""The cluster's pods and services as this host last heard of them from etcd (pure).

Fed with listings (reset) and watch events (apply), it answers what services select
(endpoints), what nftables needs (service_nat) and what cluster DNS answers (names).
Keys and values are untrusted: what does not parse is kept out and counted in `refused`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from overlayd.cluster.errors import RecordError
from overlayd.policy.model import Policy
from overlayd.policy.records import parse_signed_record_untrusted
from overlayd.registry.records import PodEntry, ServicePort, ServiceSpec, parse_pod_untrusted, parse_service_untrusted

MAX_NODE_NAME = 253
_STILL_ENFORCED = "deleted without a CA-signed `overlayctl policy del --ca-dir`: still enforced"


@dataclass(frozen=True)
class Change:
    """One key as a watch or listing reports it (value None: deleted)."""

    key: bytes
    value: bytes | None
    lease_id: int = 0  # the etcd lease the key is stored under


# (key, value, node, lease id) -> None, or RecordError: the trust layer's check of a pod record.
PodVerifier = Callable[[str, bytes, str, int], None]
# (key, canonical policy document or None for a tombstone, "signature") -> generation (policy/signing.py)
PolicyVerifier = Callable[[str, dict[str, Any] | None, object], int]


@dataclass(frozen=True)
class ServiceNat:
    """One service port as nftables programs it."""

    service: str
    vip: IPv4Address
    port: ServicePort
    endpoints: tuple[IPv4Address, ...]  # sorted; empty: connections are rejected


class RegistryView:
    def __init__(self, prefix: str, verify_pod: PodVerifier | None = None,
                 verify_policy: PolicyVerifier | None = None) -> None:
        self._verify_pod = verify_pod
        self.verify_policy = verify_policy
        self.policy_generations: dict[str, int] = {}  # trust mode: the newest signed generation accepted
        self.pods_prefix = f"{prefix}/pods/"
        self.services_prefix = f"{prefix}/services/"
        self.policies_prefix = f"{prefix}/policies/"
        self.pods: dict[tuple[str, str], PodEntry] = {}  # (node, name)
        self.services: dict[str, ServiceSpec] = {}
        self.policies: dict[str, Policy] = {}
        self.refused: dict[str, str] = {}  # key -> why
        self.generation = 0  # counts changes, so consumers can cache what they derive
        self._service_nat: tuple[int, tuple[ServiceNat, ...]] = (-1, ())

    # --- feeding -------------------------------------------------------------------

    def reset(self, prefix: str, changes: Iterable[Change]) -> None:
        """A full listing of one prefix (pods/, services/ or policies/) replaces what we held under it."""
        changes = list(changes)
        if prefix == self.pods_prefix:
            self.pods.clear()
        elif prefix == self.policies_prefix:
            if self.verify_policy is None:
                self.policies.clear()
        else:
            self.services.clear()
        self.refused = {k: v for k, v in self.refused.items() if not k.startswith(prefix)}
        self.apply(changes)
        if prefix == self.policies_prefix and self.verify_policy is not None:  # signed policies only go by tombstone
            listed = {c.key.decode("ascii", "replace") for c in changes}
            for name in self.policies:
                if self.policies_prefix + name not in listed:
                    self.refused[self.policies_prefix + name] = _STILL_ENFORCED

    def apply(self, changes: Iterable[Change]) -> bool:
        """Watch events; whether anything a consumer sees changed."""
        changed = False
        for change in changes:
            changed |= self._apply_one(change)
        self.generation += 1
        return changed

    def _apply_one(self, change: Change) -> bool:
        try:
            key = change.key.decode("ascii")
        except UnicodeDecodeError:
            return False  # not a key we could have written; nothing refers to it
        self.refused.pop(key, None)
        if key.startswith(self.pods_prefix):
            return self._apply_pod(key, key[len(self.pods_prefix):], change.value, change.lease_id)
        if key.startswith(self.services_prefix):
            return self._apply_service(key, key[len(self.services_prefix):], change.value)
        if key.startswith(self.policies_prefix):
            return self._apply_policy(key, key[len(self.policies_prefix):], change.value)
        return False

    def _apply_pod(self, key: str, rest: str, value: bytes | None, lease_id: int) -> bool:
        node, slash, name = rest.partition("/")
        if not slash or not node or len(node) > MAX_NODE_NAME or "/" in name:
            self.refused[key] = "key is not pods/<node>/<name>"
            return False
        before = self.pods.pop((node, name), None)
        if value is None:
            return before is not None
        try:
            entry = parse_pod_untrusted(node, name, value)
            if self._verify_pod is not None:
                self._verify_pod(key, value, node, lease_id)
        except RecordError as exc:
            self.refused[key] = str(exc)
            return before is not None
        self.pods[(node, name)] = entry
        return entry != before

    def _apply_service(self, key: str, name: str, value: bytes | None) -> bool:
        before = self.services.pop(name, None)
        if value is None:
            return before is not None
        try:
            spec = parse_service_untrusted(name, value)
        except RecordError as exc:
            self.refused[key] = str(exc)
            return before is not None
        self.services[name] = spec
        return spec != before

    def _apply_policy(self, key: str, name: str, value: bytes | None) -> bool:
        if self.verify_policy is None:
            before = self.policies.pop(name, None)
            if value is None:
                return before is not None
            try:
                policy, _ = parse_signed_record_untrusted(name, value)
            except RecordError as exc:
                self.refused[key] = str(exc)
                return before is not None
            if policy is None:  # a tombstone
                return before is not None
            self.policies[name] = policy
            return policy != before
        # Trust mode: a policy changes only through a newer record signed by the cluster CA.
        before = self.policies.get(name)
        if value is None:
            if before is not None:
                self.refused[key] = _STILL_ENFORCED
            return False
        try:
            policy, signature = parse_signed_record_untrusted(name, value)
            generation = self.verify_policy(key, policy.to_doc() if policy is not None else None, signature)
        except RecordError as exc:
            self.refused[key] = str(exc) + ("; the last signed version stays in force" if before is not None else "")
            return False
        seen = self.policy_generations.get(name, -1)
        if generation < seen or (generation == seen and policy != before):
            self.refused[key] = f"signed generation {generation} is older than {seen} (replayed): the newer stays in force"
            return False
        self.policy_generations[name] = generation
        if policy is None:
            return self.policies.pop(name, None) is not None
        self.policies[name] = policy
        return policy != before

    def seed_policies(self, policies: Iterable[Policy], generations: dict[str, int]) -> None:
        """Trust mode, at start: what the last run accepted (policy cache), so a replay of an older
        signed version, or a deletion while we were down, is refused."""
        self.policy_generations = dict(generations)
        self.policies = {p.name: p for p in policies if p.name in generations}

    # --- answers ---------------------------------------------------------------------

    def endpoints(self, spec: ServiceSpec) -> list[PodEntry]:
        """Pods the service selects, IPv4 only (VIPs are IPv4), in a stable order."""
        return sorted((pod for pod in self.pods.values()
                       if isinstance(pod.ip, IPv4Address) and spec.selects(pod.labels)),
                      key=lambda pod: (pod.node, pod.name))

    def service_nat(self) -> tuple[ServiceNat, ...]:
        """Memoised per generation: the rules are read again by the NAT keeper for the same change."""
        if self._service_nat[0] != self.generation:
            self._service_nat = (self.generation, self._build_service_nat())
        return self._service_nat[1]

    def _build_service_nat(self) -> tuple[ServiceNat, ...]:
        rows = []
        for name in sorted(self.services):
            spec = self.services[name]
            ips = tuple(sorted({pod.ip for pod in self.endpoints(spec)}))  # type: ignore[type-var]
            rows += [ServiceNat(name, spec.vip, port, ips) for port in spec.ports]  # type: ignore[arg-type]
        return tuple(rows)

    def names(self) -> tuple[dict[str, IPv4Address], dict[str, IPv4Address]]:
        """(pods, services) by name for cluster DNS. Two hosts may have pods of one name: the
        first by host name answers, so every daemon gives the same answer."""
        pods: dict[str, IPv4Address] = {}
        for (node, name), pod in sorted(self.pods.items()):
            if pod.kind == "pod" and isinstance(pod.ip, IPv4Address):
                pods.setdefault(name, pod.ip)
        return pods, {name: spec.vip for name, spec in self.services.items()}
