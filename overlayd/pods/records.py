"""What we know about a pod: the persisted record and the view handed to callers (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from ipaddress import IPv4Address, IPv6Address, ip_address
from types import MappingProxyType
from typing import Any

from overlayd.errors import UsageError
from overlayd.nat.ports import Publication, publications_untrusted
from overlayd.pods.config import PodNamespaces
from overlayd.pods.names import validate_labels, validate_pod_name

IPAddress = IPv4Address | IPv6Address


def format_time(moment: datetime) -> str:
    """ISO-8601 in UTC with a Z, to the second: 2024-05-01T12:00:00Z."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


@dataclass(frozen=True)
class PodRecord:
    """The persisted part of a pod; everything else is derived from the config."""

    name: str
    ip: IPAddress
    node: str
    created: str  # ISO-8601 UTC, see format_time
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[Publication, ...] = ()  # published host ports (nat/)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def to_dict(self) -> dict[str, Any]:
        record = {
            "name": self.name,
            "ip": str(self.ip),
            "node": self.node,
            "labels": dict(self.labels),
            "created": self.created,
        }
        if self.ports:  # only then: stores of pods without ports read the same in older versions
            record["ports"] = [p.to_dict() for p in self.ports]
        return record

    @classmethod
    def from_dict_untrusted(cls, data: object) -> PodRecord:
        """Parse a record read back from disk; raises ValueError naming the problem."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a pod record must be an object, got {type(data).__name__}")
        fields = {"name", "ip", "node", "labels", "created"}
        if set(data) - {"ports"} != fields:
            raise ValueError(f"a pod record has fields {sorted(map(str, data))}, expected {sorted(fields)}")
        name, ip, node, labels, created = (data[k] for k in ("name", "ip", "node", "labels", "created"))
        try:
            validate_pod_name(name)
            validate_labels(labels)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(node, str) or not isinstance(created, str) or not isinstance(ip, str):
            raise ValueError(f"pod {name}: ip, node and created must be strings")
        try:
            parsed_ip = ip_address(ip)
            datetime.fromisoformat(created)
        except ValueError as exc:
            raise ValueError(f"pod {name}: {exc}") from None
        try:
            ports = publications_untrusted(data.get("ports", []))
        except UsageError as exc:
            raise ValueError(f"pod {name}: {exc}") from None
        return cls(name=name, ip=parsed_ip, node=node, created=created, labels=labels, ports=ports)


@dataclass(frozen=True)
class PodInfo:
    """A pod as callers see it (the control API sends to_dict())."""

    name: str
    ip: IPAddress
    node: str
    labels: Mapping[str, str]
    created: str  # ISO-8601 UTC
    netns: str  # the net namespace's name under netns_dir, for `ip netns exec`
    namespaces: PodNamespaces
    ports: tuple[Publication, ...] = ()

    @classmethod
    def of(cls, record: PodRecord, namespaces: PodNamespaces) -> PodInfo:
        return cls(
            name=record.name,
            ip=record.ip,
            node=record.node,
            labels=record.labels,
            created=record.created,
            netns=namespaces.netns_name,
            namespaces=namespaces,
            ports=record.ports,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ip": str(self.ip),
            "node": self.node,
            "labels": dict(self.labels),
            "created": self.created,
            "netns": self.netns,
            "namespaces": self.namespaces.to_dict(),
            "host_veth": self.namespaces.host_veth,
            "ports": [str(p) for p in self.ports],
        }
