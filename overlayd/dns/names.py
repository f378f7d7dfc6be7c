"""What the cluster zone holds: one immutable snapshot (pure).

The daemon builds a new ClusterNames whenever pods or services change and hands it to
NamesSource.update(); queries are answered from it without touching etcd.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from types import MappingProxyType

DEFAULT_DOMAIN = "cluster.local"
MAX_NAME_TEXT = 253  # a domain name in text form, without the root dot (RFC 1035)
MAX_LABEL = 63
# RFC 1123 labels in lowercase, as pod names (overlayd.pods.names) and Kubernetes require.
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def check_domain(domain: str) -> None:
    """ValueError unless `domain` can hold the zone (lowercase labels, room for names under it)."""
    if not isinstance(domain, str):
        raise ValueError(f"DNS domain: expected a string, got {domain!r}")
    labels = domain.split(".")
    if not domain or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"DNS domain {domain!r}: expected lowercase labels of a-z 0-9 '-' joined by dots")
    # The longest name the zone holds, <63 characters>.svc.<domain>, must still be a valid name.
    if len(domain) + MAX_LABEL + len(".svc.") > MAX_NAME_TEXT:
        raise ValueError(f"DNS domain {domain[:20]!r}... is too long for names under it")


def _frozen_table(kind: str, table: Mapping[str, IPv4Address]) -> Mapping[str, IPv4Address]:
    bad = sorted(repr(name) for name in table if not isinstance(name, str) or not _LABEL.fullmatch(name))
    if bad:
        raise ValueError(f"{kind} names must be lowercase DNS labels (a-z 0-9 '-'): {', '.join(bad[:5])}")
    wrong = sorted(name for name, ip in table.items() if not isinstance(ip, IPv4Address))
    if wrong:
        raise ValueError(f"{kind} addresses must be IPv4Address: {', '.join(wrong[:5])}")
    return MappingProxyType(dict(table))


@dataclass(frozen=True)
class ClusterNames:
    """<service>.svc.<domain> -> the service's VIP; <pod>.pod.<domain> -> the pod's IP.

    Names are single lowercase DNS labels (ValueError otherwise); the mappings are copied,
    so the snapshot does not change when the caller's dicts do."""

    domain: str = DEFAULT_DOMAIN
    pods: Mapping[str, IPv4Address] = field(default_factory=dict)
    services: Mapping[str, IPv4Address] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_domain(self.domain)
        object.__setattr__(self, "pods", _frozen_table("pod", self.pods))
        object.__setattr__(self, "services", _frozen_table("service", self.services))
