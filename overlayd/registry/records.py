"""Pod and service records in etcd (pure): encoding, and parsing of what other hosts wrote.

    {prefix}/pods/<node>/<name>
        One key per pod or CNI attachment of a host, attached to the host's subnet lease, so a
        dead host's pods disappear with its lease:
        {"name": "web-1", "node": "host-1", "ip": "10.244.3.2", "labels": {"app": "web"},
         "kind": "pod"}
        CNI attachments have "kind": "cni" and are named "cni:<container id>" (':' is never
        in a pod name, so the two cannot collide).

    {prefix}/services/<name>
        {"name": "web", "vip": "10.96.0.10", "selector": {"app": "web"},
         "ports": [{"port": 80, "target_port": 8080, "protocol": "tcp"}]}
        No lease: a service lives until `overlayctl service del`.

    {prefix}/vips/<address>
        The service holding a virtual IP ("web"); created in the same transaction as the
        service key, only if both are absent, so two services never share an address.

Everything read from etcd is untrusted: a record that does not parse is skipped and counted,
and never reaches nftables or DNS.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Literal

from overlayd.cluster.errors import RecordError
from overlayd.cluster.records import address_untrusted, json_object_untrusted
from overlayd.errors import UsageError
from overlayd.pods.names import validate_labels, validate_pod_name

IPAddress = IPv4Address | IPv6Address
PodKind = Literal["pod", "cni"]
Protocol = Literal["tcp", "udp"]
MAX_SERVICE_PORTS = 32
CNI_NAME_PREFIX = "cni:"
# Container ids (CNI spec): alphanumerics, '_', '.', '-'; we also bound the length.
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_PORT_SPEC = re.compile(r"(\d{1,5})(?::(\d{1,5}))?(?:/(tcp|udp))?")


@dataclass(frozen=True)
class PodEntry:
    name: str
    node: str
    ip: IPAddress
    labels: Mapping[str, str] = field(default_factory=dict, hash=False, compare=True)
    kind: PodKind = "pod"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "node": self.node, "ip": str(self.ip), "labels": dict(self.labels),
                "kind": self.kind}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()


@dataclass(frozen=True, order=True)
class ServicePort:
    protocol: Protocol
    port: int
    target_port: int

    def to_dict(self) -> dict[str, Any]:
        return {"port": self.port, "target_port": self.target_port, "protocol": self.protocol}

    def __str__(self) -> str:
        return f"{self.port}:{self.target_port}/{self.protocol}"


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    vip: IPv4Address
    selector: Mapping[str, str]
    ports: tuple[ServicePort, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "vip": str(self.vip), "selector": dict(self.selector),
                "ports": [p.to_dict() for p in self.ports]}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()

    def selects(self, labels: Mapping[str, str]) -> bool:
        """Kubernetes' equality selector; an empty selector selects nothing (a service without
        a selector has no automatic endpoints there either)."""
        return bool(self.selector) and all(labels.get(k) == v for k, v in self.selector.items())


def is_container_id(value: str) -> bool:
    return _CONTAINER_ID.fullmatch(value) is not None


def _checked(check: Any, value: Any, what: str) -> None:
    """Run a UsageError validator on a value from etcd; RecordError instead."""
    try:
        check(value)
    except UsageError as exc:
        raise RecordError(f"{what}: {exc}") from None


def _labels_untrusted(value: object, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise RecordError(f"{what} must map strings to strings")
    _checked(validate_labels, value, what)
    return dict(value)


def parse_pod_untrusted(node: str, name: str, value: bytes) -> PodEntry:
    """A record under pods/<node>/<name>; its fields must agree with its key."""
    doc = json_object_untrusted(value, what="pod record")
    kind = doc.get("kind", "pod")
    if kind not in ("pod", "cni"):
        raise RecordError(f"pod record kind {str(kind)[:20]!r} is neither 'pod' nor 'cni'")
    if doc.get("name") != name or doc.get("node") != node:
        raise RecordError(f"pod record for {name!r} on {node!r} names another pod or host")
    if kind == "pod":
        _checked(validate_pod_name, name, "pod name")
    elif not (name.startswith(CNI_NAME_PREFIX) and is_container_id(name[len(CNI_NAME_PREFIX):])):
        raise RecordError(f"CNI record name {name[:40]!r} is not cni:<container id>")
    return PodEntry(name, node, address_untrusted(doc.get("ip"), "pod ip"),
                    _labels_untrusted(doc.get("labels", {}), "pod labels"), kind)


def _port_number(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise RecordError(f"{what} must be a port number 1-65535")
    return value


def ports_untrusted(value: object) -> tuple[ServicePort, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_SERVICE_PORTS:
        raise RecordError(f"service ports must be a list of 1 to {MAX_SERVICE_PORTS}")
    ports = []
    for item in value:
        if not isinstance(item, dict):
            raise RecordError("a service port must be an object")
        protocol = item.get("protocol")
        if protocol not in ("tcp", "udp"):
            raise RecordError(f"service port protocol {str(protocol)[:10]!r} is neither tcp nor udp")
        ports.append(ServicePort(protocol, _port_number(item.get("port"), "service port"),
                                 _port_number(item.get("target_port"), "target port")))
    if len({(p.protocol, p.port) for p in ports}) != len(ports):
        raise RecordError("service ports repeat a port and protocol")
    return tuple(sorted(ports))


def parse_service_untrusted(name: str, value: bytes) -> ServiceSpec:
    doc = json_object_untrusted(value, what="service record")
    if doc.get("name") != name:
        raise RecordError(f"service record under {name!r} names another service")
    _checked(validate_pod_name, name, "service name")  # the same DNS-label rule
    vip = address_untrusted(doc.get("vip"), "service vip")
    if not isinstance(vip, IPv4Address):
        raise RecordError("service vip must be IPv4")
    return ServiceSpec(name, vip, _labels_untrusted(doc.get("selector", {}), "service selector"),
                       ports_untrusted(doc.get("ports")))


def parse_port_spec(text: str) -> ServicePort:
    """`80`, `80:8080`, `80:8080/udp` (service port, target port, protocol; tcp by default); UsageError."""
    match = _PORT_SPEC.fullmatch(text)
    if match is None:
        raise UsageError(f"port {text!r}: expected PORT[:TARGET_PORT][/tcp|/udp], e.g. 80:8080/tcp")
    port = int(match.group(1))
    target = int(match.group(2) or port)
    for number in (port, target):
        if not 1 <= number <= 65535:
            raise UsageError(f"port {text!r}: {number} is not a port number (1-65535)")
    return ServicePort(match.group(3) or "tcp", port, target)  # type: ignore[arg-type]  # matched tcp|udp


def parse_selector(text: str) -> dict[str, str]:
    """`app=web,tier=front` -> labels; UsageError."""
    selector: dict[str, str] = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise UsageError(f"selector {text!r}: expected KEY=VALUE[,KEY=VALUE...]")
        selector[key.strip()] = value.strip()
    validate_labels(selector)
    return selector
