"""Host certificates: a cluster CA key vouches that a host name owns an Ed25519 key.

A certificate is one JSON object (the file `overlayctl ca sign-host` writes, and the
"cert" field of every signed host record):

    {"version": 1,
     "node": "host-1",                          # the host name it is issued to
     "public_key": "<base64, 32 bytes>",        # the host's Ed25519 identity key
     "not_before": "2025-01-01T00:00:00Z",      # valid from (inclusive), UTC, whole seconds
     "not_after": "2026-01-01T00:00:00Z",       # valid until (exclusive)
     "serial": "<32 lower-case hex>",           # random, for the operator's records
     "issuer": "<16 lower-case hex>",           # key id of the CA key (keyfiles.key_id)
     "signature": "<base64, 64 bytes>"}         # CA's Ed25519 signature, see below

The CA signs CERT_DOMAIN + the canonical JSON (sorted keys, no spaces, ASCII) of every
field but "signature". Verifiers rebuild those bytes from the parsed fields, never from
the bytes received, so no encoding trick can change what a signature covers. The parser
refuses anything else: missing or extra fields, wrong types, non-canonical base64 or
times, oversized values.

The trust anchor file (`ca.pub`) holds one or more PEM public keys: every daemon trusts
certificates issued by any of them (several while rotating the CA).
"""

from __future__ import annotations

import base64
import binascii
import calendar
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from overlayd.cluster.errors import RecordError
from overlayd.cluster.records import is_node_name, json_object_untrusted
from overlayd.errors import ConfigError
from overlayd.trust.errors import CertificateError, UntrustedCertificate
from overlayd.trust.keyfiles import PUBLIC_KEY_BYTES, is_weak_public_key, key_id, raw_public

CERT_VERSION = 1
CERT_DOMAIN = b"overlayd host certificate v1\n"
SIGNATURE_BYTES = 64
# A certificate is ~400 bytes (a 253-char host name included).
MAX_CERT_BYTES = 2048
MAX_ANCHOR_BYTES = 65536

_FIELDS = frozenset({"version", "node", "public_key", "not_before", "not_after", "serial", "issuer", "signature"})
_TIME_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_SERIAL_RE = re.compile(r"^[0-9a-f]{32}$")
_KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_PEM_PUBLIC_RE = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    """The one byte string a signed document maps to."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def format_time(seconds: int) -> str:
    return time.strftime(_TIME_FORMAT, time.gmtime(seconds))


def parse_time_untrusted(value: object, field: str) -> int:
    """A "YYYY-MM-DDTHH:MM:SSZ" string as Unix seconds; only the canonical spelling passes."""
    if not isinstance(value, str) or not _TIME_RE.match(value):
        raise CertificateError(f"{field} must be a UTC time like 2025-01-31T12:00:00Z, got {str(value)[:40]!r}")
    try:
        seconds = calendar.timegm(time.strptime(value, _TIME_FORMAT))
    except ValueError:
        raise CertificateError(f"{field} {value!r} is not a valid date and time") from None
    if seconds < 0 or format_time(seconds) != value:  # e.g. a leap second "23:59:60"
        raise CertificateError(f"{field} {value!r} is not a canonical time after 1970")
    return seconds


def b64_untrusted(value: object, size: int, field: str) -> bytes:
    """Exactly `size` bytes in canonical standard base64, or CertificateError."""
    if not isinstance(value, str) or len(value) != 4 * ((size + 2) // 3):
        raise CertificateError(f"{field} must be base64 of {size} bytes")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CertificateError(f"{field} is not valid base64") from None
    # Non-zero padding bits would give one value two spellings.
    if len(raw) != size or base64.b64encode(raw).decode() != value:
        raise CertificateError(f"{field} must be canonical base64 of {size} bytes")
    return raw


@dataclass(frozen=True)
class HostCertificate:
    """A checked certificate; whether a CA really signed it is TrustAnchor.verify's job."""

    node: str
    public_key: bytes  # raw Ed25519 public key
    not_before: int  # Unix seconds, inclusive
    not_after: int  # Unix seconds, exclusive
    serial: str
    issuer: str  # key id of the signing CA key
    signature: bytes

    def __post_init__(self) -> None:
        if not is_node_name(self.node):
            raise CertificateError(f"node {str(self.node)[:80]!r} is not a valid host name")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != PUBLIC_KEY_BYTES:
            raise CertificateError(f"public_key must be {PUBLIC_KEY_BYTES} bytes")
        if is_weak_public_key(self.public_key):
            raise CertificateError("public_key is a weak (small-order or non-canonical) Ed25519 key")
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_BYTES:
            raise CertificateError(f"signature must be {SIGNATURE_BYTES} bytes")
        if not isinstance(self.serial, str) or not _SERIAL_RE.match(self.serial):
            raise CertificateError("serial must be 32 lower-case hex digits")
        if not isinstance(self.issuer, str) or not _KEY_ID_RE.match(self.issuer):
            raise CertificateError("issuer must be 16 lower-case hex digits (a CA key id)")
        for name in ("not_before", "not_after"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise CertificateError(f"{name} must be non-negative Unix seconds")
        if self.not_before >= self.not_after:
            raise CertificateError("not_before must be earlier than not_after")

    def body(self) -> dict[str, Any]:
        """Every field the CA signature covers, as JSON values."""
        return {
            "version": CERT_VERSION,
            "node": self.node,
            "public_key": base64.b64encode(self.public_key).decode(),
            "not_before": format_time(self.not_before),
            "not_after": format_time(self.not_after),
            "serial": self.serial,
            "issuer": self.issuer,
        }

    def signed_bytes(self) -> bytes:
        return CERT_DOMAIN + canonical_json(self.body())

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "signature": base64.b64encode(self.signature).decode()}

    def valid_at(self, now: float) -> bool:
        return self.not_before <= now < self.not_after


def issue_certificate(
    ca_key: Ed25519PrivateKey, node: str, public_key: bytes, *, not_before: int, not_after: int,
    serial: str | None = None,
) -> HostCertificate:
    """Sign a certificate binding node to public_key (CertificateError for bad fields)."""
    unsigned = HostCertificate(
        node=node, public_key=public_key, not_before=not_before, not_after=not_after,
        serial=serial or secrets.token_hex(16), issuer=key_id(raw_public(ca_key.public_key())),
        signature=bytes(SIGNATURE_BYTES),
    )
    return replace(unsigned, signature=ca_key.sign(unsigned.signed_bytes()))


def parse_certificate_untrusted(doc: object) -> HostCertificate:
    """A certificate from its decoded JSON object; CertificateError for anything off-format."""
    if not isinstance(doc, dict):
        raise CertificateError(f"certificate must be a JSON object, got {type(doc).__name__}")
    if set(doc) != _FIELDS:
        missing = sorted(_FIELDS - set(doc))
        extra = sorted(str(k)[:20] for k in set(doc) - _FIELDS)[:3]
        raise CertificateError(f"certificate fields wrong (missing {missing}, unknown {extra})")
    version = doc["version"]
    if type(version) is not int or version != CERT_VERSION:
        raise CertificateError(f"certificate version must be {CERT_VERSION}, got {str(version)[:20]!r}")
    node = doc["node"]
    if not isinstance(node, str):
        raise CertificateError("certificate node must be a string")
    return HostCertificate(
        node=node,
        public_key=b64_untrusted(doc["public_key"], PUBLIC_KEY_BYTES, "certificate public_key"),
        not_before=parse_time_untrusted(doc["not_before"], "not_before"),
        not_after=parse_time_untrusted(doc["not_after"], "not_after"),
        serial=doc["serial"],
        issuer=doc["issuer"],
        signature=b64_untrusted(doc["signature"], SIGNATURE_BYTES, "certificate signature"),
    )


@dataclass(frozen=True)
class TrustAnchor:
    """The CA public keys a cluster trusts, by key id."""

    keys: Mapping[str, bytes]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigError("a trust anchor needs at least one CA public key")
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    @classmethod
    def from_public_keys(cls, keys: Iterable[Ed25519PublicKey]) -> TrustAnchor:
        raws = [raw_public(k) for k in keys]
        return cls({key_id(raw): raw for raw in raws})

    def verify(self, cert: HostCertificate) -> None:
        """UntrustedCertificate unless one of our CA keys signed exactly this certificate."""
        public = self.keys.get(cert.issuer)
        if public is None:
            raise UntrustedCertificate(f"certificate issued by CA key {cert.issuer}, which is not a trust anchor")
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(cert.signature, cert.signed_bytes())
        except InvalidSignature:
            raise UntrustedCertificate(f"CA signature of the certificate for {cert.node!r} does not verify") from None


def load_trust_anchor(path: Path) -> TrustAnchor:
    """Read one or more PEM Ed25519 public keys (ConfigError naming the file if unusable)."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_ANCHOR_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read trust anchor {path}: {exc.strerror}") from None
    if len(data) > MAX_ANCHOR_BYTES:
        raise ConfigError(f"trust anchor {path} is larger than {MAX_ANCHOR_BYTES} bytes")
    keys = []
    for block in _PEM_PUBLIC_RE.findall(data):
        try:
            key = load_pem_public_key(block)
        except ValueError:
            raise ConfigError(f"trust anchor {path} holds a PEM block that is not a public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"trust anchor {path} holds a key that is not Ed25519")
        if is_weak_public_key(raw_public(key)):
            raise ConfigError(f"trust anchor {path} holds a weak (small-order) Ed25519 key")
        keys.append(key)
    if not keys:
        raise ConfigError(f"trust anchor {path} holds no PEM public key")
    return TrustAnchor.from_public_keys(keys)


def certificate_file_bytes(cert: HostCertificate) -> bytes:
    return (json.dumps(cert.to_dict(), indent=2, sort_keys=True) + "\n").encode()


def load_certificate(path: Path) -> HostCertificate:
    """Read a certificate file (ConfigError naming the file if unusable)."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_CERT_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read host certificate {path}: {exc.strerror}") from None
    try:
        return parse_certificate_untrusted(json_object_untrusted(data, max_bytes=MAX_CERT_BYTES, what="certificate"))
    except (RecordError, CertificateError) as exc:
        raise ConfigError(f"host certificate {path}: {exc}") from None
