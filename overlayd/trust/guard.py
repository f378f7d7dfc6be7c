"""What a daemon with a trust anchor checks besides each record as it is read.

A record is verified when etcd delivers it; after that nothing about it changes in etcd
when its certificate runs out or the CA revokes it. So the daemon re-checks on a timer
([trust] recheck_interval): TrustGuard.screen() keeps the programmed peers whose
certificate (the one their record carried when verified) is still valid and not revoked,
and says which it dropped; own_problem() says when this host's own certificate is revoked
or expired (its peers then refuse its record). It also holds the revocation list
(revocation.py), consulted by its verifier for every record read, and the config verifier
(configsig.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from overlayd.cluster.keys import IPNetwork, KeyLayout
from overlayd.cluster.records import Lease, json_object_untrusted
from overlayd.trust.certs import HostCertificate, format_time, parse_certificate_untrusted
from overlayd.trust.configsig import ConfigVerifier
from overlayd.trust.errors import RecordRejected, RejectReason, RevocationError
from overlayd.trust.revocation import Revocations
from overlayd.trust.signing import RecordSigner, RecordVerifier

REVOKED_FILE = "revoked.json"


class RevokingVerifier:
    """A LeaseVerifier: the record verifier's checks, then the revocation list. It remembers
    each accepted record's certificate by subnet, for TrustGuard.screen."""

    def __init__(self, inner: RecordVerifier, revocations: Revocations) -> None:
        self.inner = inner
        self.anchor = inner.anchor
        self.rejected = inner.rejected  # one count of refusals, whichever check refused
        self._revocations = revocations
        self.certs: dict[IPNetwork, HostCertificate] = {}

    def __call__(self, key: str, value: bytes, lease: Lease) -> Lease:
        checked = self.inner(key, value, lease)
        # The inner verifier parsed this very certificate, so this cannot fail.
        cert = parse_certificate_untrusted(json_object_untrusted(value)["cert"])
        if self._revocations.is_revoked(cert.serial):
            self.rejected[RejectReason.REVOKED] += 1
            raise RecordRejected(RejectReason.REVOKED, f"{lease.subnet}: record of {lease.record.node!r} rejected "
                                                       f"(revoked): certificate serial {cert.serial} is revoked")
        self.certs[lease.subnet] = cert
        return checked


class TrustGuard:
    def __init__(self, signer: RecordSigner, verifier: RecordVerifier, layout: KeyLayout, state_dir: Path, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.revocations = Revocations(verifier.anchor, layout.revoked, state_dir / REVOKED_FILE)
        self.verifier = RevokingVerifier(verifier, self.revocations)
        self.config_verifier = ConfigVerifier(verifier.anchor)
        self._signer = signer
        self._clock = clock
        self._dropped: dict[IPNetwork, str] = {}  # subnet -> serial already counted as dropped

    def refresh(self, value: bytes | None) -> tuple[bool, str | None]:
        """Offer the list read from etcd (None: no key); (now in force, a new problem to report)."""
        if value is None:  # deleted or never written: what we have stays in force
            return False, None
        before = sum(self.revocations.ignored.values())
        try:
            return self.revocations.offer(value), None
        except RevocationError as exc:
            counted = sum(self.revocations.ignored.values()) > before
            return False, f"revocation list in etcd ignored: {exc}" if counted else None

    def _reason(self, cert: HostCertificate, now: float) -> tuple[RejectReason, str] | None:
        if self.revocations.is_revoked(cert.serial):
            return RejectReason.REVOKED, f"certificate serial {cert.serial} is revoked"
        if now >= cert.not_after:
            return RejectReason.CERT_EXPIRED, f"certificate expired at {format_time(cert.not_after)}"
        return None

    def screen(self, peers: Mapping[IPNetwork, Lease]) -> tuple[dict[IPNetwork, Lease], list[str]]:
        """The peers whose certificate still holds, and the reasons (cluster Rejection texts)
        for those dropped since the last call. Peers with no verified certificate here (taken
        from the saved state while etcd is away) are kept until etcd lists them again."""
        now = self._clock()
        kept: dict[IPNetwork, Lease] = {}
        dropped: list[str] = []
        counted: dict[IPNetwork, str] = {}
        for subnet, lease in peers.items():
            cert = self.verifier.certs.get(subnet)
            found = self._reason(cert, now) if cert is not None else None
            if cert is None or found is None:
                kept[subnet] = lease
                continue
            reason, detail = found
            counted[subnet] = cert.serial
            if self._dropped.get(subnet) != cert.serial:  # each batch repeats the peer: count it once
                self.verifier.rejected[reason] += 1
                dropped.append(str(RecordRejected(
                    reason, f"{subnet}: peer {lease.record.node!r} dropped ({reason}): {detail}")))
        self._dropped = counted
        return kept, dropped

    def own_problem(self) -> str | None:
        cert = self._signer.cert
        found = self._reason(cert, self._clock())
        if found is None:
            return None
        return (f"this host's certificate: {found[1]}; peers refuse its record: issue a new one "
                "(`overlayctl ca sign-host`) and restart overlayd")

    def status(self) -> dict[str, Any]:
        return {"revocations": self.revocations.status(), "own_certificate": self.own_problem() or "ok"}
