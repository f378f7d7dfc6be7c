"""The cluster-wide network config: pod network, per-host subnet length and tunnel backend.

The config travels as JSON through etcd, so every parser here treats its input as untrusted
and raises InvalidConfig naming the offending field. The constructors validate too, so a
ClusterConfig or BackendConfig that exists is always usable.

Bounds and why:
- network: CIDR without host bits, not overlapping special-purpose ranges (this-network,
  loopback, link-local, multicast, reserved; IPv6 unspecified, loopback, IPv4-mapped,
  link-local, multicast): pods there would be unroutable or would capture host traffic.
  This also refuses /0.
- subnet_len: longer than the network prefix (so at least two hosts fit) and at most
  max_prefixlen - MIN_HOST_BITS (/29 for IPv4, /125 for IPv6): every host subnet keeps its
  gateway plus at least 5 (IPv4) or 6 (IPv6) pod addresses. Default /24 for IPv4, /64 for IPv6.
- backend.type: "vxlan" (vni 1..16777215, default 1; port default 4789, the IANA VXLAN port),
  "wireguard" (no VNI; port is the listen port, default 51820) or "host-gw" (plain routes:
  neither VNI nor port). port: 1..65535.
- backend.options: checked when the backend type knows them (see _BACKENDS).
- Fields and options this version does not know are kept verbatim (`unknown`,
  `unknown_options`), not refused: during a rolling upgrade a newer overlayctl may write a
  config older daemons cannot fully read, and they must keep running on what they know.
  to_dict() writes them back, so a signature over the config covers them too
  (overlayd/trust/configsig.py), and readers name them (unknown_fields()) to warn once.
  An unknown backend type is still refused: nothing can be tunnelled with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from types import MappingProxyType
from typing import Any

from ipam.errors import InvalidConfig

IPNetwork = IPv4Network | IPv6Network

DEFAULT_NETWORK = IPv4Network("10.244.0.0/16")
DEFAULT_SERVICE_NETWORK = IPv4Network("10.96.0.0/16")  # Kubernetes' default service range
DEFAULT_SUBNET_LEN = {4: 24, 6: 64}
# Host bits every host subnet keeps: 8 addresses = network, gateway, (IPv4 broadcast) and >= 5 pods.
MIN_HOST_BITS = 3
VNI_MAX = 2**24 - 1
# A config is a few hundred bytes; refuse megabytes of JSON from etcd before parsing them.
MAX_JSON_BYTES = 64 * 1024

_SPECIAL_RANGES: dict[int, tuple[tuple[IPNetwork, str], ...]] = {
    4: (
        (IPv4Network("0.0.0.0/8"), "this-network"),
        (IPv4Network("127.0.0.0/8"), "loopback"),
        (IPv4Network("169.254.0.0/16"), "link-local"),
        (IPv4Network("224.0.0.0/4"), "multicast"),
        (IPv4Network("240.0.0.0/4"), "reserved and broadcast"),
    ),
    6: (
        (IPv6Network("::/128"), "unspecified"),
        (IPv6Network("::1/128"), "loopback"),
        (IPv6Network("::ffff:0:0/96"), "IPv4-mapped"),
        (IPv6Network("fe80::/10"), "link-local"),
        (IPv6Network("ff00::/8"), "multicast"),
    ),
}

Check = Callable[[str, object], Any]


def _show(value: object) -> str:
    """repr() of an untrusted value, cut short so error messages stay one readable line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _field_name(prefix: str | None, key: object) -> str:
    """Dotted name of an untrusted key, cut short like _show()."""
    name = key if isinstance(key, str) else _show(key)
    name = f"{prefix}.{name}" if prefix else name
    return name if len(name) <= 60 else name[:57] + "..."


def _int_in(low: int, high: int) -> Check:
    def check(name: str, value: object) -> int:
        # bool is an int subclass; JSON true must not pass as 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidConfig(name, f"must be an integer, got {_show(value)}")
        if not low <= value <= high:
            raise InvalidConfig(name, f"must be in {low}..{high}, got {value}")
        return value

    return check


_check_vni = _int_in(1, VNI_MAX)
_check_port = _int_in(1, 65535)
# 1280 is the IPv6 minimum MTU, so the same bound serves both pod families.
_check_mtu = _int_in(1280, 65535)


@dataclass(frozen=True)
class _BackendSpec:
    default_port: int | None  # None: this backend type has no port
    default_vni: int | None  # None: this backend type has no VNI
    options: Mapping[str, Check]


_BACKENDS: Mapping[str, _BackendSpec] = {
    "vxlan": _BackendSpec(default_port=4789, default_vni=1, options={"mtu": _check_mtu}),
    "wireguard": _BackendSpec(
        default_port=51820,
        default_vni=None,
        options={"mtu": _check_mtu, "persistent_keepalive": _int_in(0, 65535)},
    ),
    "host-gw": _BackendSpec(default_port=None, default_vni=None, options={"mtu": _check_mtu}),
}


def _backend_spec(type_: object) -> _BackendSpec:
    if not isinstance(type_, str):
        raise InvalidConfig("backend.type", f"must be a string, got {_show(type_)}")
    try:
        return _BACKENDS[type_]
    except KeyError:
        known = ", ".join(sorted(_BACKENDS))
        raise InvalidConfig("backend.type", f"unknown backend type {_show(type_)} (known: {known})") from None


def _fields_untrusted(prefix: str | None, doc: object, known: tuple[str, ...]
                      ) -> tuple[Mapping[str, object], dict[str, object]]:
    """doc's known fields, and the others (kept verbatim); doc must be a JSON object."""
    if not isinstance(doc, Mapping):
        raise InvalidConfig(prefix, f"{'must' if prefix else 'config must'} be a JSON object, got {_show(doc)}")
    return ({k: v for k, v in doc.items() if k in known},
            {k: v for k, v in doc.items() if k not in known})


def _unknown_mapping(value: object, name: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InvalidConfig(name, f"must map field names to values, got {_show(value)}")
    return MappingProxyType(dict(value))


@dataclass(frozen=True)
class BackendConfig:
    """How hosts tunnel pod traffic to each other.

    vni and port left as None take the type's default; after construction they hold the
    effective values (each stays None for types without one).
    """

    type: str = "vxlan"
    vni: int | None = None
    port: int | None = None
    # A read-only copy; excluded from the hash because mappings are unhashable.
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    # Fields and options a newer version wrote: kept for to_dict(), otherwise ignored.
    unknown: Mapping[str, Any] = field(default_factory=dict, hash=False)
    unknown_options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        spec = _backend_spec(self.type)
        if spec.default_vni is None:
            if self.vni is not None:
                raise InvalidConfig("backend.vni", f"backend type {self.type!r} has no VNI")
            vni = None
        else:
            vni = _check_vni("backend.vni", spec.default_vni if self.vni is None else self.vni)
        if spec.default_port is None:
            if self.port is not None:
                raise InvalidConfig("backend.port", f"backend type {self.type!r} has no port")
            port = None
        else:
            port = _check_port("backend.port", spec.default_port if self.port is None else self.port)
        object.__setattr__(self, "vni", vni)
        object.__setattr__(self, "port", port)
        if not isinstance(self.options, Mapping):
            raise InvalidConfig("backend.options", f"must be a JSON object, got {_show(self.options)}")
        object.__setattr__(self, "unknown", _unknown_mapping(self.unknown, "backend"))
        unknown_options = {**_unknown_mapping(self.unknown_options, "backend.options"),
                           **{k: v for k, v in self.options.items() if k not in spec.options}}
        object.__setattr__(self, "unknown_options", _unknown_mapping(unknown_options, "backend.options"))
        object.__setattr__(self, "options", MappingProxyType(
            {k: spec.options[k](f"backend.options.{k}", v) for k, v in self.options.items() if k in spec.options}))

    def unknown_fields(self) -> list[str]:
        return sorted([_field_name("backend", k) for k in self.unknown]
                      + [_field_name("backend.options", k) for k in self.unknown_options])

    @classmethod
    def from_dict_untrusted(cls, doc: object) -> BackendConfig:
        fields, unknown = _fields_untrusted("backend", doc, ("type", "vni", "port", "options"))
        return cls(
            type=fields.get("type", "vxlan"),  # type: ignore[arg-type]  # checked in __post_init__
            vni=fields.get("vni"),  # type: ignore[arg-type]
            port=fields.get("port"),  # type: ignore[arg-type]
            options=fields.get("options", {}),  # type: ignore[arg-type]
            unknown=unknown,
        )

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.type}
        if self.vni is not None:
            doc["vni"] = self.vni
        if self.port is not None:
            doc["port"] = self.port
        doc["options"] = {**self.unknown_options, **self.options}
        return {**self.unknown, **doc}


def _parse_network_untrusted(value: object, name: str = "network") -> IPNetwork:
    if not isinstance(value, str) or "/" not in value or len(value) > 64:
        raise InvalidConfig(name, f"must be a CIDR string like '10.244.0.0/16', got {_show(value)}")
    try:
        return ip_network(value, strict=True)
    except ValueError as exc:
        raise InvalidConfig(name, str(exc)) from None


def _check_network(network: object) -> IPNetwork:
    if not isinstance(network, (IPv4Network, IPv6Network)):
        raise InvalidConfig("network", f"must be an IPv4Network or IPv6Network, got {_show(network)}")
    if isinstance(network, IPv6Network) and network.network_address.scope_id is not None:
        raise InvalidConfig("network", f"{network} must not carry a scope id")
    for special, what in _SPECIAL_RANGES[network.version]:
        if network.overlaps(special):
            raise InvalidConfig("network", f"{network} overlaps {special} ({what}); pods cannot use it")
    longest = network.max_prefixlen - MIN_HOST_BITS
    if network.prefixlen >= longest:
        raise InvalidConfig(
            "network", f"{network} is too small to split into host subnets (longest host subnet is /{longest})"
        )
    return network


def _check_subnet_len(network: IPNetwork, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidConfig("subnet_len", f"must be an integer, got {_show(value)}")
    longest = network.max_prefixlen - MIN_HOST_BITS
    if not network.prefixlen < value <= longest:
        raise InvalidConfig(
            "subnet_len",
            f"must be in {network.prefixlen + 1}..{longest} for network {network} (longer than the "
            f"network prefix, and leaving {MIN_HOST_BITS} host bits for the gateway and pods), got {value}",
        )
    return value


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would silently keep the last duplicate; two writers disagreeing is a corrupt config.
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise InvalidConfig(None, f"config repeats the key {_show(key)}")
        doc[key] = value
    return doc


@dataclass(frozen=True)
class ClusterConfig:
    """The pod network of the whole cluster and how it is cut into one subnet per host.

    subnet_len left as None takes the family's default (/24 for IPv4, /64 for IPv6).
    """

    network: IPNetwork = DEFAULT_NETWORK
    subnet_len: int | None = None
    backend: BackendConfig = field(default_factory=BackendConfig)
    unknown: Mapping[str, Any] = field(default_factory=dict, hash=False)  # see the module docstring
    # Where service virtual IPs come from; None: DEFAULT_SERVICE_NETWORK (left out of to_dict, so
    # configs written before services existed keep their bytes and signatures).
    service_network: IPv4Network | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "unknown", _unknown_mapping(self.unknown, "config"))
        network = _check_network(self.network)
        if self.service_network is not None:
            if not isinstance(self.service_network, IPv4Network):
                raise InvalidConfig("service_network", f"must be an IPv4 network, got {_show(self.service_network)}")
            if self.service_network.overlaps(network) or self.service_network.prefixlen > 28:  # type: ignore[arg-type]
                raise InvalidConfig("service_network", f"{self.service_network} must be at most a /28 and must "
                                                       f"not overlap the pod network {network}")
        subnet_len = DEFAULT_SUBNET_LEN[network.version] if self.subnet_len is None else self.subnet_len
        object.__setattr__(self, "subnet_len", _check_subnet_len(network, subnet_len))
        if not isinstance(self.backend, BackendConfig):
            raise InvalidConfig("backend", f"must be a BackendConfig, got {_show(self.backend)}")

    @property
    def subnet_count(self) -> int:
        """How many host subnets the network holds."""
        assert self.subnet_len is not None  # resolved in __post_init__
        return 1 << (self.subnet_len - self.network.prefixlen)

    @property
    def services(self) -> IPv4Network:
        """The service network in force (the default when none is set)."""
        return self.service_network if self.service_network is not None else DEFAULT_SERVICE_NETWORK

    def contains_subnet(self, subnet: IPNetwork) -> bool:
        """Whether subnet is one of this cluster's host subnets (right family, length and place)."""
        return (
            subnet.version == self.network.version
            and subnet.prefixlen == self.subnet_len
            and subnet.subnet_of(self.network)  # type: ignore[arg-type]  # same family checked above
        )

    @classmethod
    def from_dict_untrusted(cls, doc: object) -> ClusterConfig:
        """Parse a config dict (decoded JSON from etcd); missing fields take their defaults."""
        fields, unknown = _fields_untrusted(None, doc, ("network", "subnet_len", "backend", "service_network"))
        network = _parse_network_untrusted(fields["network"]) if "network" in fields else DEFAULT_NETWORK
        services = None
        if "service_network" in fields:
            services = _parse_network_untrusted(fields["service_network"], "service_network")
            if not isinstance(services, IPv4Network):
                raise InvalidConfig("service_network", f"must be an IPv4 network, got {services}")
        return cls(
            network=network,
            subnet_len=fields.get("subnet_len"),  # type: ignore[arg-type]  # checked in __post_init__
            backend=BackendConfig.from_dict_untrusted(fields.get("backend", {})),
            unknown=unknown,
            service_network=services,
        )

    def unknown_fields(self) -> list[str]:
        """Dotted names of the fields this version does not know (and ignores)."""
        return sorted([_field_name(None, k) for k in self.unknown]) + self.backend.unknown_fields()

    @classmethod
    def from_json_untrusted(cls, data: bytes | str) -> ClusterConfig:
        if len(data) > MAX_JSON_BYTES:
            raise InvalidConfig(None, f"config is too long ({len(data)} > {MAX_JSON_BYTES})")
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            doc = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
        except UnicodeDecodeError:
            raise InvalidConfig(None, "config is not UTF-8 text") from None
        except (ValueError, RecursionError) as exc:
            raise InvalidConfig(None, f"config is not valid JSON: {exc}") from None
        return cls.from_dict_untrusted(doc)

    def to_dict(self) -> dict[str, Any]:
        doc = {**self.unknown, "network": str(self.network), "subnet_len": self.subnet_len,
               "backend": self.backend.to_dict()}
        if self.service_network is not None:
            doc["service_network"] = str(self.service_network)
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
