"""Host records and subnet leases: the values under {prefix}/subnets/ (layout in keys.py).

Every host can write these keys, so what we read is untrusted: the *_untrusted parsers
refuse anything malformed with a RecordError, which callers count and skip. The same
checks run when a record is constructed, so a HostRecord that exists is always valid.

Two optional hooks let a trust layer (overlayd/trust) sign and verify records without
this module knowing how: a RecordEncoder turns a record into the value stored under a
key, a LeaseVerifier checks a parsed lease against its raw value (RecordError if not).
Both get the full etcd key, so a signature can bind the record to where it is stored.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from types import MappingProxyType
from typing import Any

from overlayd.cluster.errors import BAD_ENDPOINT, BAD_SUBNET, RecordError
from overlayd.cluster.keys import IPNetwork, KeyLayout

IPAddress = IPv4Address | IPv6Address

# A record is ~150 bytes; refuse big values before parsing them.
MAX_RECORD_BYTES = 4096
MAX_BACKEND_FIELDS = 16
MAX_BACKEND_VALUE = 256

# Same rule as the daemon's node_name (DNS-style host name, lower case).
_NODE_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
_FIELD_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_PRINTABLE_RE = re.compile(r"^[\x20-\x7e]*$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_PORT_RE = re.compile(r"^[1-9][0-9]{0,4}$")


def is_node_name(value: object) -> bool:
    """Whether value is a valid host name (the rule for node_name everywhere)."""
    return isinstance(value, str) and _NODE_RE.match(value) is not None


def _check_mac(value: str) -> None:
    if not _MAC_RE.match(value):
        raise RecordError(f"vtep_mac {value!r} is not six lower-case hex octets separated by ':'")
    # A multicast or zero VTEP MAC would turn the peer's unicast FDB entry into a flood entry.
    if int(value[:2], 16) & 1 or value == "00:00:00:00:00:00":
        raise RecordError(f"vtep_mac {value} is not a unicast address")


def _check_wireguard_key(value: str) -> None:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32 or base64.b64encode(raw).decode() != value:
        raise RecordError(f"public_key {value[:60]!r} is not a base64 WireGuard key (32 bytes)")


def _check_port(value: str) -> None:
    if not _PORT_RE.match(value) or int(value) > 65535:
        raise RecordError(f"port {value!r} is not a decimal port 1..65535")


# Backend fields whose format we know; other fields only pass the generic checks.
_KNOWN_FIELDS = {"vtep_mac": _check_mac, "public_key": _check_wireguard_key, "port": _check_port}


def _check_backend(backend: Mapping[str, str]) -> None:
    if len(backend) > MAX_BACKEND_FIELDS:
        raise RecordError(f"backend has {len(backend)} fields (at most {MAX_BACKEND_FIELDS})")
    for key, value in backend.items():
        if not isinstance(key, str) or not _FIELD_RE.match(key):
            raise RecordError(f"backend field name {str(key)[:40]!r} is not [a-z][a-z0-9_]{{0,31}}")
        if not isinstance(value, str) or len(value) > MAX_BACKEND_VALUE or not _PRINTABLE_RE.match(value):
            raise RecordError(f"backend.{key} must be printable ASCII text of at most {MAX_BACKEND_VALUE} chars")
        check = _KNOWN_FIELDS.get(key)
        if check:
            check(value)
    backend_type = backend.get("type")
    if backend_type is None or not _TYPE_RE.match(backend_type):
        raise RecordError(f"backend.type {backend_type!r} missing or not a backend name")


def _check_endpoint(address: IPAddress) -> None:
    """Refuse addresses peers must never send underlay packets to. Private, CGNAT and IPv4
    link-local addresses are real underlays; IPv6 link-local is not (it needs a zone)."""
    # is_reserved covers IPv4 240/4 (with 255.255.255.255) and, for IPv6, ::/8 (IPv4-mapped too).
    if (address.is_unspecified or address.is_loopback or address.is_multicast or address.is_reserved
            or (address.version == 6 and address.is_link_local)):
        raise RecordError(f"public_ip {address} is not a unicast address peers can reach", reason=BAD_ENDPOINT)


@dataclass(frozen=True)
class HostRecord:
    """What peers need to reach a host: its name, underlay address and backend data."""

    node: str
    public_ip: IPAddress
    # A read-only copy; hashed by its items below.
    backend: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not is_node_name(self.node):
            raise RecordError(f"node {str(self.node)[:80]!r} is not a valid host name")
        if not isinstance(self.public_ip, (IPv4Address, IPv6Address)):
            raise RecordError(f"public_ip {self.public_ip!r} is not an IP address")
        _check_endpoint(self.public_ip)
        if not isinstance(self.backend, Mapping):
            raise RecordError(f"backend must be a mapping, got {type(self.backend).__name__}")
        _check_backend(self.backend)
        object.__setattr__(self, "backend", MappingProxyType(dict(self.backend)))

    def __hash__(self) -> int:
        return hash((self.node, self.public_ip, tuple(sorted(self.backend.items()))))

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "public_ip": str(self.public_ip), "backend": dict(self.backend)}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Lease:
    """A host subnet lease as read from etcd (lease_id and the revisions from the key's metadata)."""

    subnet: IPNetwork
    record: HostRecord
    lease_id: int | None = None
    mod_revision: int = 0
    create_revision: int = 0  # when the key was created: the older of two claims wins (0: unknown)


# (full etcd key, record, etcd lease id it is written under) -> the value to store;
# the default is HostRecord.to_json. Deterministic: the same arguments give the same bytes
# (the store compares its key's value with what it wrote).
RecordEncoder = Callable[[str, HostRecord, int], bytes]
# (full etcd key, raw value, lease parsed from it) -> the lease, or RecordError.
LeaseVerifier = Callable[[str, bytes, Lease], Lease]


def _object_untrusted(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        # json would keep the last duplicate silently; two readers could disagree on which counts.
        if key in doc:
            raise RecordError(f"record repeats the field {key[:40]!r}")
        doc[key] = value
    return doc


def json_object_untrusted(data: bytes, *, max_bytes: int = MAX_RECORD_BYTES, what: str = "record") -> dict[str, Any]:
    """Decode a JSON object of at most max_bytes, refusing repeated field names."""
    if len(data) > max_bytes:
        raise RecordError(f"{what} is {len(data)} bytes (at most {max_bytes})")
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_object_untrusted)
    except UnicodeDecodeError:
        raise RecordError(f"{what} is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise RecordError(f"{what} is not valid JSON: {str(exc)[:80]}") from None
    if not isinstance(doc, dict):
        raise RecordError(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def address_untrusted(value: object, what: str) -> IPv4Address | IPv6Address:
    """An IP address in its one canonical spelling (so one address is never two records); RecordError."""
    if not isinstance(value, str) or len(value) > 45:
        raise RecordError(f"{what} must be an address string, got {str(value)[:60]!r}")
    try:
        address = ip_address(value)
    except ValueError:
        raise RecordError(f"{what} {value!r} is not an IP address") from None
    if str(address) != value:
        raise RecordError(f"{what} {value!r} is not canonical (expected {str(address)!r})")
    return address


def parse_host_record_untrusted(data: bytes) -> HostRecord:
    """Parse a host record value; unknown top-level fields are ignored (newer writers may add some,
    e.g. the trust layer's "cert" and "sig")."""
    doc = json_object_untrusted(data)
    node, backend = doc.get("node"), doc.get("backend")
    address = address_untrusted(doc.get("public_ip"), "public_ip")
    if not isinstance(backend, dict):
        raise RecordError(f"backend must be a JSON object, got {type(backend).__name__}")
    return HostRecord(node=node, public_ip=address, backend=backend)  # type: ignore[arg-type]  # checked there


def check_subnet(subnet: IPNetwork, network: IPNetwork, subnet_len: int) -> None:
    """RecordError unless subnet is one of the cluster's host subnets."""
    same_family = subnet.version == network.version
    if not same_family or subnet.prefixlen != subnet_len or not subnet.subnet_of(network):  # type: ignore[arg-type]
        raise RecordError(f"subnet {subnet} is not a /{subnet_len} inside the cluster network {network}",
                          reason=BAD_SUBNET)


def parse_lease_untrusted(
    key: bytes,
    value: bytes,
    *,
    layout: KeyLayout,
    network: IPNetwork,
    subnet_len: int,
    lease_id: int | None = None,
    mod_revision: int = 0,
    verifier: LeaseVerifier | None = None,
) -> Lease:
    """Parse one {prefix}/subnets/ key and its value into a Lease; RecordError if unusable
    (including when a verifier is given and refuses it)."""
    subnet = layout.subnet_of_key_untrusted(key)
    check_subnet(subnet, network, subnet_len)
    try:
        record = parse_host_record_untrusted(value)
    except RecordError as exc:
        raise RecordError(f"{subnet}: {exc}", reason=exc.reason) from None
    lease = Lease(subnet=subnet, record=record, lease_id=lease_id, mod_revision=mod_revision)
    # The key parsed above, so it is ASCII and canonical.
    return verifier(key.decode("ascii"), value, lease) if verifier else lease
