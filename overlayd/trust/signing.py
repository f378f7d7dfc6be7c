"""Signed host records: every record carries its host's certificate and a signature.

A signed record is the plain record plus two fields:

    {"node": "host-1", "public_ip": "198.18.0.11", "backend": {...},
     "lease": "<etcd lease id the key is written under, lower-case hex>",
     "cert": {<the host certificate, see certs.py>},
     "sig": "<base64, 64 bytes>"}

"sig" is the host key's Ed25519 signature over RECORD_DOMAIN + the canonical JSON of

    {"key": "<full etcd key, e.g. /overlayd/network/subnets/10.244.3.0-24>",
     "lease": ..., "node": ..., "public_ip": ..., "backend": {...}}

so a signed record cannot be replayed under another subnet (or another cluster prefix),
and no field a peer acts on can change. The lease binds it to one claim: every restart
or reclaim takes a new etcd lease, so an old record written back (under the host's new
lease, or under none) no longer matches the lease it is stored under and is refused
(`replayed`, `no_lease`); the host itself notices its key no longer holds what it wrote
and writes it back (SubnetStore.renew). Readers that know nothing of trust ignore the
extra fields. A RecordVerifier accepts a record only if its certificate is well-formed,
signed by a trust anchor, valid now, names the record's node, the record sits under the
lease it was signed for, and the signature matches.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from overlayd.cluster.errors import RecordError
from overlayd.cluster.records import MAX_RECORD_BYTES, HostRecord, Lease, json_object_untrusted
from overlayd.errors import ConfigError
from overlayd.trust.certs import (
    SIGNATURE_BYTES,
    HostCertificate,
    TrustAnchor,
    b64_untrusted,
    canonical_json,
    format_time,
    parse_certificate_untrusted,
)
from overlayd.trust.errors import CertificateError, RecordRejected, RejectReason, UntrustedCertificate
from overlayd.trust.keyfiles import raw_public

RECORD_DOMAIN = b"overlayd host record v2\n"  # v2: bound to the etcd lease
POD_DOMAIN = b"overlayd pod record v1\n"  # pod records (registry/) of the same host, same key


def lease_text(lease_id: int) -> str:
    return f"{lease_id:x}"


def record_signed_bytes(key: str, record: HostRecord, lease_id: int) -> bytes:
    """What a host signs for `record` stored under `key` on etcd lease `lease_id`."""
    return RECORD_DOMAIN + canonical_json({"key": key, "lease": lease_text(lease_id), **record.to_dict()})


def pod_signed_bytes(key: str, fields: dict[str, object], lease_id: int) -> bytes:
    """What a host signs for a pod record (its plain fields) stored under `key` on lease `lease_id`."""
    return POD_DOMAIN + canonical_json({"key": key, "lease": lease_text(lease_id), **fields})


class RecordSigner:
    """Turns this host's record into a signed value (a RecordEncoder for the cluster layer)."""

    def __init__(self, private_key: Ed25519PrivateKey, cert: HostCertificate) -> None:
        if raw_public(private_key.public_key()) != cert.public_key:
            raise ConfigError(f"the host key does not match the public key in the certificate for {cert.node!r}")
        self._key = private_key
        self.cert = cert

    def __repr__(self) -> str:  # never the private key
        return f"RecordSigner(node={self.cert.node!r}, serial={self.cert.serial})"

    def __call__(self, key: str, record: HostRecord, lease_id: int) -> bytes:
        if record.node != self.cert.node:
            raise ConfigError(f"the host certificate is for {self.cert.node!r}, not for node {record.node!r}")
        signature = self._key.sign(record_signed_bytes(key, record, lease_id))  # Ed25519: deterministic
        doc = {**record.to_dict(), "lease": lease_text(lease_id), "cert": self.cert.to_dict(),
               "sig": base64.b64encode(signature).decode()}
        value = canonical_json(doc)
        if len(value) > MAX_RECORD_BYTES:  # peers would refuse it: fail here, loudly
            raise RecordError(f"signed record is {len(value)} bytes (at most {MAX_RECORD_BYTES})")
        return value


    def sign_pod(self, key: str, fields: dict[str, object], lease_id: int) -> bytes:
        """A pod record of this host, signed like its host record (registry/ calls this)."""
        if fields.get("node") != self.cert.node:
            raise ConfigError(f"the host certificate is for {self.cert.node!r}, not for node {fields.get('node')!r}")
        signature = self._key.sign(pod_signed_bytes(key, fields, lease_id))
        return canonical_json({**fields, "lease": lease_text(lease_id), "cert": self.cert.to_dict(),
                               "sig": base64.b64encode(signature).decode()})


class RecordVerifier:
    """Checks signed records against a trust anchor (a LeaseVerifier for the cluster layer).

    `rejected` counts every failed check by reason (a bad record listed twice counts twice).
    """

    def __init__(self, anchor: TrustAnchor, *, clock: Callable[[], float] = time.time) -> None:
        self.anchor = anchor
        self._clock = clock
        self.rejected: Counter[RejectReason] = Counter()

    def __call__(self, key: str, value: bytes, lease: Lease) -> Lease:
        try:
            self._verify_untrusted(key, value, lease)
        except RecordRejected as exc:
            self.rejected[exc.reason] += 1
            raise
        return lease

    def verify_pod_untrusted(self, key: str, value: bytes, node: str, lease_id: int) -> None:
        """RecordRejected unless the pod record under `key` (of host `node`, on etcd lease
        `lease_id`) carries a valid signature of that host, made for this key and lease."""
        def reject(reason: RejectReason, detail: str) -> RecordRejected:
            return RecordRejected(reason, f"pod record {key} rejected ({reason}): {detail}")

        try:
            doc = json_object_untrusted(value)
            cert, signature = self._signed_by(doc, node, lease_id, reject)
            fields = {k: v for k, v in doc.items() if k not in ("lease", "cert", "sig")}
            Ed25519PublicKey.from_public_bytes(cert.public_key).verify(
                signature, pod_signed_bytes(key, fields, lease_id))
        except RecordRejected as exc:
            self.rejected[exc.reason] += 1
            raise
        except InvalidSignature:
            self.rejected[RejectReason.BAD_SIGNATURE] += 1
            raise reject(RejectReason.BAD_SIGNATURE, "signature does not match the key and the record") from None

    def _signed_by(self, doc: dict, node: str, lease_id: int | None,
                   reject: Callable[[RejectReason, str], RecordRejected]) -> tuple[HostCertificate, bytes]:
        """The checks every signed record passes: a certificate of `node` from our CA, valid
        now, the record bound to the lease it is stored under; returns it with the signature."""
        if "cert" not in doc or "sig" not in doc:
            raise reject(RejectReason.UNSIGNED, "no certificate or signature")
        try:
            cert = parse_certificate_untrusted(doc["cert"])
        except CertificateError as exc:
            raise reject(RejectReason.BAD_CERT, str(exc)) from None
        try:
            self.anchor.verify(cert)
        except UntrustedCertificate as exc:
            raise reject(RejectReason.UNTRUSTED_CERT, str(exc)) from None
        now = self._clock()
        if now < cert.not_before:
            raise reject(RejectReason.CERT_NOT_YET_VALID, f"certificate valid from {format_time(cert.not_before)}")
        if now >= cert.not_after:
            raise reject(RejectReason.CERT_EXPIRED, f"certificate expired at {format_time(cert.not_after)}")
        if cert.node != node:
            raise reject(RejectReason.NODE_MISMATCH, f"certificate is for {cert.node!r}")
        # A record on no lease never expires: whoever wrote it, it is never a peer.
        if not lease_id:
            raise reject(RejectReason.NO_LEASE, "stored under no etcd lease")
        if doc.get("lease") != lease_text(lease_id):
            signed_for = doc.get("lease")
            raise reject(RejectReason.REPLAYED, f"signed for etcd lease {str(signed_for)[:20]!r}, stored under "
                                                f"lease {lease_text(lease_id)}")
        try:
            return cert, b64_untrusted(doc["sig"], SIGNATURE_BYTES, "sig")
        except CertificateError:
            raise reject(RejectReason.BAD_SIGNATURE, "malformed signature") from None

    def _verify_untrusted(self, key: str, value: bytes, lease: Lease) -> None:
        record = lease.record

        def reject(reason: RejectReason, detail: str) -> RecordRejected:
            return RecordRejected(reason, f"{lease.subnet}: record of {record.node!r} rejected ({reason}): {detail}")

        doc = json_object_untrusted(value)  # the lease parsed from it, so this passes
        cert, signature = self._signed_by(doc, record.node, lease.lease_id, reject)
        try:
            Ed25519PublicKey.from_public_bytes(cert.public_key).verify(
                signature, record_signed_bytes(key, record, lease.lease_id))  # type: ignore[arg-type]
        except (InvalidSignature, ValueError):
            raise reject(RejectReason.BAD_SIGNATURE, f"signature does not match {key} and the record") from None
