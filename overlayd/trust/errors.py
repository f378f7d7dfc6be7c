"""Errors of the trust layer.

Certificates and signatures read from etcd are untrusted input: a malformed one is a
CertificateError, one no configured CA vouches for an UntrustedCertificate; a cluster
config no CA signed is an UntrustedConfig, an unusable revocation list a RevocationError. A host record
that fails any check becomes a RecordRejected, a RecordError, so the cluster layer skips
and reports it like any other unusable record; its `reason` says which check failed.
"""

from __future__ import annotations

from enum import StrEnum

from overlayd.cluster.errors import RecordError
from overlayd.errors import OverlaydError


class TrustError(OverlaydError):
    """A certificate or signature cannot be used."""


class CertificateError(TrustError):
    """A host certificate is malformed (wrong fields, types, sizes, base64 or times)."""


class UntrustedCertificate(TrustError):
    """A well-formed host certificate that no configured CA key has signed."""


class UntrustedConfig(TrustError):
    """The cluster config in etcd is not signed by a trust anchor (configsig.py); never applied."""


class RevocationError(TrustError):
    """A revocation list is malformed, not signed by a trust anchor, or older than one seen."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason  # a RevocationReason value (metric label and log text)
        super().__init__(message)


class RejectReason(StrEnum):
    """Why a host record did not verify (metric label and log text)."""

    UNSIGNED = "unsigned"  # no "cert" or no "sig" field
    BAD_CERT = "bad_cert"  # the certificate is malformed
    UNTRUSTED_CERT = "untrusted_cert"  # not signed by a trusted CA (unknown issuer or bad CA signature)
    CERT_NOT_YET_VALID = "cert_not_yet_valid"
    CERT_EXPIRED = "cert_expired"
    NODE_MISMATCH = "node_mismatch"  # the certificate names another host than the record
    NO_LEASE = "no_lease"  # stored under no etcd lease: it would never expire
    REPLAYED = "replayed"  # signed for another etcd lease than the one it is stored under
    BAD_SIGNATURE = "bad_signature"  # the record's signature is malformed or does not match
    REVOKED = "revoked"  # the certificate's serial is on the cluster CA's revocation list


class RecordRejected(RecordError):
    """A host record failed verification against the trust anchor."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        self.reason = reason
        super().__init__(message)
