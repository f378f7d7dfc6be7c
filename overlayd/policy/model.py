"""NetworkPolicy documents (pure): parsed from what a user or etcd gave us, checked, normalised.

We take Kubernetes `networking.k8s.io/v1` NetworkPolicy documents as they are, so that what
users know carries over: a pod selector (matchLabels and matchExpressions with In, NotIn,
Exists, DoesNotExist), policy types (defaulted as the API server does: Ingress always,
Egress when the policy has egress rules), ingress and egress rules whose peers are pod
selectors or IP blocks (with `except`), and ports (a number, a range with endPort, or a
protocol alone).

overlayd's pods have no Kubernetes namespace: a pod selector in a peer selects among all
pods of the cluster, a `namespaceSelector` is refused with one clear line, and
`metadata.namespace` is ignored with a warning. Named ports are refused too (our pods
declare no container ports to resolve them against).

Parsing is strict where a mistake would silently change what is allowed: unknown fields in
`spec` and below are errors (a misspelt `ingres:` must not leave a pod open). Sizes are
bounded, so a record from etcd cannot make the daemon build millions of rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, collapse_addresses, ip_network
from typing import Any, Literal

from overlayd.errors import UsageError
from overlayd.pods.names import _validate_label_key, _validate_label_value

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Protocol = Literal["tcp", "udp", "sctp"]
Direction = Literal["ingress", "egress"]
Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]

API_VERSION = "networking.k8s.io/v1"
KIND = "NetworkPolicy"
INGRESS, EGRESS = "Ingress", "Egress"
PROTOCOLS: dict[str, Protocol] = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
OPERATORS: tuple[Operator, ...] = ("In", "NotIn", "Exists", "DoesNotExist")

POLICY_NAME_MAX = 63  # also names nftables counters (pi_<name>, pe_<name>), which must stay short
MAX_RULES = 64  # per direction
MAX_PEERS = 64  # per rule
MAX_PORTS = 64  # per rule
MAX_RULE_PRODUCT = 512  # peers x ports of one rule: one nftables rule each
MAX_EXPRESSIONS = 32
MAX_VALUES = 64
MAX_EXCEPT = 64
MAX_MATCH_LABELS = 64

_POLICY_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
_METADATA_IGNORED = {"labels", "annotations", "uid", "resourceVersion", "generation", "creationTimestamp",
                     "managedFields", "selfLink", "finalizers", "ownerReferences"}


class PolicyError(UsageError):
    """A policy document is invalid; the message names the field (`spec.ingress[0].from[1]: ...`)."""


def validate_policy_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise PolicyError("metadata.name: a policy needs a name")
    if len(name) > POLICY_NAME_MAX or not _POLICY_NAME.fullmatch(name):
        raise PolicyError(f"metadata.name {name[:70]!r}: at most {POLICY_NAME_MAX} of lowercase letters, digits, "
                          "'-' and '.', starting and ending with a letter or digit")
    return name


# --- label selectors ---------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()  # sorted, no repeats

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":  # as Kubernetes: a pod without the key is not in the set
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"key": self.key, "operator": self.operator}
        if self.values:
            doc["values"] = list(self.values)
        return doc

    def __str__(self) -> str:
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return f"!{self.key}"
        word = "in" if self.operator == "In" else "notin"
        return f"{self.key} {word} ({','.join(self.values)})"


@dataclass(frozen=True)
class Selector:
    """A Kubernetes label selector: every matchLabels pair and every expression must hold;
    the empty selector selects everything."""

    match_labels: tuple[tuple[str, str], ...] = ()  # sorted
    expressions: tuple[Requirement, ...] = ()  # in document order (all must hold: order is irrelevant)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(k) == v and k in labels for k, v in self.match_labels)
                and all(r.matches(labels) for r in self.expressions))

    @property
    def key(self) -> tuple[Any, ...]:
        """Equal for selectors that select the same pods by construction (used to share nftables sets)."""
        return (self.match_labels, tuple(sorted(set(self.expressions), key=lambda r: (r.key, r.operator, r.values))))

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.match_labels:
            doc["matchLabels"] = dict(self.match_labels)
        if self.expressions:
            doc["matchExpressions"] = [r.to_dict() for r in self.expressions]
        return doc

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels] + [str(r) for r in self.expressions]
        return ",".join(parts) if parts else "(all pods)"


# --- peers and ports -------------------------------------------------------------------


@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, ip: IPAddress) -> bool:
        return (ip.version == self.cidr.version and ip in self.cidr
                and not any(ip in e for e in self.excepts))  # type: ignore[operator]

    def prefixes(self) -> tuple[IPNetwork, ...]:
        """The block as disjoint prefixes: cidr minus every except (an nftables interval set)."""
        remaining: list[IPNetwork] = [self.cidr]
        for hole in collapse_addresses(self.excepts):  # type: ignore[arg-type, type-var]
            nxt: list[IPNetwork] = []
            for net in remaining:
                if hole.subnet_of(net):  # type: ignore[arg-type]
                    nxt += net.address_exclude(hole)  # type: ignore[arg-type]
                elif not net.subnet_of(hole):  # type: ignore[arg-type]
                    nxt.append(net)
            remaining = nxt
        return tuple(sorted(collapse_addresses(remaining)))  # type: ignore[arg-type, type-var]

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"cidr": str(self.cidr)}
        if self.excepts:
            doc["except"] = [str(e) for e in self.excepts]
        return doc

    def __str__(self) -> str:
        return str(self.cidr) + (f" except {','.join(map(str, self.excepts))}" if self.excepts else "")


@dataclass(frozen=True)
class Peer:
    """Exactly one of a pod selector (pods of the whole cluster) or an IP block."""

    pods: Selector | None = None
    ip_block: IPBlock | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.ip_block is not None:
            return {"ipBlock": self.ip_block.to_dict()}
        assert self.pods is not None
        return {"podSelector": self.pods.to_dict()}

    def __str__(self) -> str:
        return f"ipBlock {self.ip_block}" if self.ip_block is not None else f"pods {self.pods}"


@dataclass(frozen=True)
class PortRule:
    protocol: Protocol
    port: int | None = None  # None: every port of the protocol
    end_port: int | None = None  # a range port..end_port

    def matches(self, protocol: str, port: int | None) -> bool:
        if protocol != self.protocol:
            return False
        if self.port is None:
            return True
        if port is None:
            return False
        return self.port <= port <= (self.end_port if self.end_port is not None else self.port)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"protocol": self.protocol.upper()}
        if self.port is not None:
            doc["port"] = self.port
        if self.end_port is not None:
            doc["endPort"] = self.end_port
        return doc

    def __str__(self) -> str:
        if self.port is None:
            return f"all/{self.protocol}"
        span = f"{self.port}-{self.end_port}" if self.end_port is not None else str(self.port)
        return f"{span}/{self.protocol}"


@dataclass(frozen=True)
class Rule:
    """An ingress or egress rule: any of `peers` (none: every address), on any of `ports`
    (none: every port and protocol)."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PortRule, ...] = ()

    def to_dict(self, direction: Direction) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.peers:
            doc["from" if direction == "ingress" else "to"] = [p.to_dict() for p in self.peers]
        if self.ports:
            doc["ports"] = [p.to_dict() for p in self.ports]
        return doc

    def __str__(self) -> str:
        peers = " or ".join(map(str, self.peers)) if self.peers else "anywhere"
        ports = ", ".join(map(str, self.ports)) if self.ports else "all ports"
        return f"{peers}; {ports}"


@dataclass(frozen=True)
class Policy:
    name: str
    pod_selector: Selector
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    types: tuple[str, ...] = (INGRESS,)  # after defaulting; subset of (Ingress, Egress), in that order

    @property
    def isolates_ingress(self) -> bool:
        return INGRESS in self.types

    @property
    def isolates_egress(self) -> bool:
        return EGRESS in self.types

    def rules(self, direction: Direction) -> tuple[Rule, ...]:
        return self.ingress if direction == "ingress" else self.egress

    def isolates(self, direction: Direction) -> bool:
        return self.isolates_ingress if direction == "ingress" else self.isolates_egress

    def to_doc(self) -> dict[str, Any]:
        """The canonical NetworkPolicy document (what etcd stores and `policy get` shows)."""
        spec: dict[str, Any] = {"podSelector": self.pod_selector.to_dict(), "policyTypes": list(self.types)}
        if self.ingress:
            spec["ingress"] = [r.to_dict("ingress") for r in self.ingress]
        if self.egress:
            spec["egress"] = [r.to_dict("egress") for r in self.egress]
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": self.name}, "spec": spec}


# --- parsing (untrusted) --------------------------------------------------------------------


def _object(value: object, where: str, allowed: set[str]) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PolicyError(f"{where}: expected an object, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise PolicyError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    return value


def _list(value: object, where: str, limit: int) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PolicyError(f"{where}: expected a list, got {type(value).__name__}")
    if len(value) > limit:
        raise PolicyError(f"{where}: {len(value)} entries; at most {limit}")
    return value


def _label_key(key: object, where: str) -> str:
    if not isinstance(key, str):
        raise PolicyError(f"{where}: a label key must be a string")
    try:
        _validate_label_key(key)
    except UsageError as exc:
        raise PolicyError(f"{where}: {exc}") from None
    return key


def _label_value(key: str, value: object, where: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(f"{where}: the value of {key!r} must be a string (quote numbers and booleans in YAML)")
    try:
        _validate_label_value(key, value)
    except UsageError as exc:
        raise PolicyError(f"{where}: {exc}") from None
    return value


def parse_selector_untrusted(value: object, where: str) -> Selector:
    doc = _object(value, where, {"matchLabels", "matchExpressions"})
    labels_doc = doc.get("matchLabels") or {}
    if not isinstance(labels_doc, Mapping) or len(labels_doc) > MAX_MATCH_LABELS:
        raise PolicyError(f"{where}.matchLabels: expected an object of at most {MAX_MATCH_LABELS} labels")
    labels = tuple(sorted((_label_key(k, f"{where}.matchLabels"),
                           _label_value(str(k), v, f"{where}.matchLabels")) for k, v in labels_doc.items()))
    expressions = []
    for i, item in enumerate(_list(doc.get("matchExpressions"), f"{where}.matchExpressions", MAX_EXPRESSIONS)):
        at = f"{where}.matchExpressions[{i}]"
        item = _object(item, at, {"key", "operator", "values"})
        key = _label_key(item.get("key"), at)
        operator = item.get("operator")
        if operator not in OPERATORS:
            raise PolicyError(f"{at}: operator {str(operator)[:20]!r} is not one of {', '.join(OPERATORS)}")
        values = _list(item.get("values"), f"{at}.values", MAX_VALUES)
        if operator in ("In", "NotIn") and not values:
            raise PolicyError(f"{at}: operator {operator} needs at least one value")
        if operator in ("Exists", "DoesNotExist") and values:
            raise PolicyError(f"{at}: operator {operator} takes no values")
        checked = tuple(sorted({_label_value(key, v, f"{at}.values") for v in values}))
        expressions.append(Requirement(key, operator, checked))
    return Selector(labels, tuple(expressions))


def _network(text: object, where: str) -> IPNetwork:
    if not isinstance(text, str) or len(text) > 64:
        raise PolicyError(f"{where}: expected a CIDR string such as 10.0.0.0/8")
    if "/" not in text:
        raise PolicyError(f"{where}: {text!r} has no prefix length (write {text}/32 for one address)")
    try:
        return ip_network(text, strict=False)  # as the API server: host bits are allowed, and cleared
    except ValueError:
        raise PolicyError(f"{where}: {text!r} is not a CIDR") from None


def _ip_block(value: object, where: str) -> IPBlock:
    doc = _object(value, where, {"cidr", "except"})
    cidr = _network(doc.get("cidr"), f"{where}.cidr")
    excepts = []
    for i, item in enumerate(_list(doc.get("except"), f"{where}.except", MAX_EXCEPT)):
        hole = _network(item, f"{where}.except[{i}]")
        if hole.version != cidr.version or not hole.subnet_of(cidr) or hole == cidr:  # type: ignore[arg-type]
            raise PolicyError(f"{where}.except[{i}]: {hole} must be strictly inside {cidr}")
        excepts.append(hole)
    return IPBlock(cidr, tuple(excepts))


def _peer(value: object, where: str) -> Peer:
    if isinstance(value, Mapping) and "namespaceSelector" in value:
        raise PolicyError(f"{where}: namespaceSelector is not supported: overlayd pods have no namespaces "
                          "(a podSelector alone selects among all pods of the cluster)")
    doc = _object(value, where, {"podSelector", "ipBlock"})
    if "ipBlock" in doc and "podSelector" in doc:
        raise PolicyError(f"{where}: a peer is either a podSelector or an ipBlock, not both")
    if doc.get("ipBlock") is not None:
        return Peer(ip_block=_ip_block(doc["ipBlock"], f"{where}.ipBlock"))
    if "podSelector" in doc:
        return Peer(pods=parse_selector_untrusted(doc["podSelector"], f"{where}.podSelector"))
    raise PolicyError(f"{where}: a peer needs a podSelector or an ipBlock")


def _port_number(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise PolicyError(f"{where}: {str(value)[:20]!r} is not a port number (1-65535)")
    return value


def _port(value: object, where: str) -> PortRule:
    doc = _object(value, where, {"protocol", "port", "endPort"})
    protocol = doc.get("protocol", "TCP")
    if protocol not in PROTOCOLS:
        raise PolicyError(f"{where}.protocol: {str(protocol)[:10]!r} is not TCP, UDP or SCTP")
    port, end = doc.get("port"), doc.get("endPort")
    if isinstance(port, str):
        raise PolicyError(f"{where}.port: named ports ({port[:20]!r}) are not supported: overlayd pods declare no "
                          "container ports; use the number")
    if port is None:
        if end is not None:
            raise PolicyError(f"{where}.endPort: needs a port to start the range")
        return PortRule(PROTOCOLS[protocol])
    number = _port_number(port, f"{where}.port")
    if end is None:
        return PortRule(PROTOCOLS[protocol], number)
    last = _port_number(end, f"{where}.endPort")
    if last < number:
        raise PolicyError(f"{where}.endPort: {last} is below port {number}")
    return PortRule(PROTOCOLS[protocol], number, last)


def _rules(value: object, where: str, peers_field: str) -> tuple[Rule, ...]:
    rules = []
    for i, item in enumerate(_list(value, where, MAX_RULES)):
        at = f"{where}[{i}]"
        doc = _object(item, at, {peers_field, "ports"})
        peers = tuple(_peer(p, f"{at}.{peers_field}[{j}]")
                      for j, p in enumerate(_list(doc.get(peers_field), f"{at}.{peers_field}", MAX_PEERS)))
        ports = tuple(_port(p, f"{at}.ports[{j}]") for j, p in enumerate(_list(doc.get("ports"), f"{at}.ports",
                                                                                 MAX_PORTS)))
        if max(len(peers), 1) * max(len(ports), 1) > MAX_RULE_PRODUCT:
            raise PolicyError(f"{at}: {len(peers)} peers x {len(ports)} ports; at most {MAX_RULE_PRODUCT} "
                              "combinations per rule (split it)")
        rules.append(Rule(peers, ports))
    return tuple(rules)


def parse_policy_untrusted(doc: object) -> tuple[Policy, list[str]]:
    """A NetworkPolicy document (decoded YAML or JSON) -> (policy, warnings); PolicyError."""
    if not isinstance(doc, Mapping):
        raise PolicyError(f"a policy must be an object, got {type(doc).__name__}")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise PolicyError(f"expected apiVersion: {API_VERSION} and kind: {KIND}, got "
                          f"{str(doc.get('apiVersion'))[:40]} {str(doc.get('kind'))[:40]}")
    metadata = doc.get("metadata")
    if not isinstance(metadata, Mapping):
        raise PolicyError("metadata: an object with the policy's name is required")
    _object(metadata, "metadata", {"name", "namespace"} | _METADATA_IGNORED)
    name = validate_policy_name(metadata.get("name"))
    warnings = []
    namespace = metadata.get("namespace")
    if namespace not in (None, ""):
        warnings.append(f"metadata.namespace {str(namespace)[:63]!r} ignored: overlayd pods have no namespaces, "
                        "the policy applies to every pod its podSelector selects")
    spec = doc.get("spec")
    if not isinstance(spec, Mapping):
        raise PolicyError("spec: required")
    spec = _object(spec, "spec", {"podSelector", "policyTypes", "ingress", "egress"})
    if "podSelector" not in spec:
        raise PolicyError("spec.podSelector: required (write `podSelector: {}` to select every pod)")
    selector = parse_selector_untrusted(spec["podSelector"], "spec.podSelector")
    ingress = _rules(spec.get("ingress"), "spec.ingress", "from")
    egress = _rules(spec.get("egress"), "spec.egress", "to")
    types_doc = _list(spec.get("policyTypes"), "spec.policyTypes", 2)
    if types_doc:
        unknown = [t for t in types_doc if t not in (INGRESS, EGRESS)]
        if unknown:
            raise PolicyError(f"spec.policyTypes: {str(unknown[0])[:20]!r} is neither Ingress nor Egress")
        types = tuple(t for t in (INGRESS, EGRESS) if t in types_doc)
    else:  # the API server's defaulting: Ingress always, Egress when there are egress rules
        types = (INGRESS, EGRESS) if egress else (INGRESS,)
    for direction, rules, kind in (("ingress", ingress, INGRESS), ("egress", egress, EGRESS)):
        if rules and kind not in types:
            warnings.append(f"spec.{direction} has rules but policyTypes lacks {kind}: they have no effect")
    return Policy(name, selector, ingress, egress, types), warnings


def iter_rules(policy: Policy, direction: Direction) -> Iterator[tuple[int, Rule]]:
    yield from enumerate(policy.rules(direction))
