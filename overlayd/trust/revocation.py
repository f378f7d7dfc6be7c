"""The cluster CA's revocation list: host certificates withdrawn before they expire.

One etcd key, {prefix}/revoked, holds the whole list (written by `overlayctl ca revoke`):

    {"version": 1,
     "generation": 1717171717,                  # grows with every write, see below
     "serials": ["<32 lower-case hex>", ...],   # sorted, no repeats
     "issuer": "<16 lower-case hex>",           # key id of the CA key that signed it
     "signature": "<base64, 64 bytes>"}

The CA signs REVOCATION_DOMAIN + the canonical JSON of {"key": <full etcd key>, and every
field but "signature"}, rebuilt from the parsed fields (as certs.py does), so a list can't
be moved to another cluster prefix. Replay: daemons keep the highest generation they
accepted (in memory and in state_dir/revoked.json) and ignore any lower one, so writing an
old, validly signed list back never un-revokes a serial. A writer picks max(previous + 1,
now in Unix seconds): a list lost from etcd (deleted, garbled) is still superseded by the
next `ca revoke` on every daemon that saved it.
"""

from __future__ import annotations

import base64
import re
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from overlayd.cluster.errors import RecordError
from overlayd.cluster.records import json_object_untrusted
from overlayd.statefile import StateError, read_json, write_json_atomic
from overlayd.trust.certs import SIGNATURE_BYTES, TrustAnchor, b64_untrusted, canonical_json
from overlayd.trust.errors import CertificateError, RevocationError
from overlayd.trust.keyfiles import key_id, raw_public

log = logging.getLogger(__name__)

REVOCATION_VERSION = 1
REVOCATION_DOMAIN = b"overlayd revocation list v1\n"
MAX_SERIALS = 10000
MAX_LIST_BYTES = 512 * 1024  # ~35 bytes a serial
MAX_GENERATION = 2**53 - 1  # exact in every JSON reader

_FIELDS = frozenset({"version", "generation", "serials", "issuer", "signature"})
_SERIAL_RE = re.compile(r"^[0-9a-f]{32}$")
_KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")


class RevocationReason(StrEnum):
    """Why a revocation list was ignored (counted by the daemon, named in its status)."""

    MALFORMED = "malformed"
    UNTRUSTED = "untrusted"  # issuer not a trust anchor, or the signature does not match
    STALE = "stale"  # validly signed, but older than a list already accepted (a replay)


def is_serial(value: object) -> bool:
    return isinstance(value, str) and bool(_SERIAL_RE.match(value))


@dataclass(frozen=True)
class RevocationList:
    generation: int
    serials: frozenset[str]
    issuer: str
    signature: bytes

    def body(self, key: str) -> dict[str, Any]:
        return {"key": key, "version": REVOCATION_VERSION, "generation": self.generation,
                "serials": sorted(self.serials), "issuer": self.issuer}

    def signed_bytes(self, key: str) -> bytes:
        return REVOCATION_DOMAIN + canonical_json(self.body(key))

    def to_dict(self) -> dict[str, Any]:
        return {"version": REVOCATION_VERSION, "generation": self.generation, "serials": sorted(self.serials),
                "issuer": self.issuer, "signature": base64.b64encode(self.signature).decode()}

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())


def next_generation(previous: int, now: float | None = None) -> int:
    return max(previous + 1, int(time.time() if now is None else now))


def sign_revocation_list(
    ca_key: Ed25519PrivateKey, key: str, serials: Iterable[str], generation: int,
) -> RevocationList:
    serials = frozenset(serials)
    if not all(is_serial(s) for s in serials):
        raise RevocationError(RevocationReason.MALFORMED, "serials must be 32 lower-case hex digits")
    if len(serials) > MAX_SERIALS:
        raise RevocationError(RevocationReason.MALFORMED, f"at most {MAX_SERIALS} revoked serials")
    if not 1 <= generation <= MAX_GENERATION:
        raise RevocationError(RevocationReason.MALFORMED, f"generation {generation} out of range")
    unsigned = RevocationList(generation, serials, key_id(raw_public(ca_key.public_key())), bytes(SIGNATURE_BYTES))
    return replace(unsigned, signature=ca_key.sign(unsigned.signed_bytes(key)))


def parse_revocation_list_untrusted(data: bytes) -> RevocationList:
    """A revocation list from its stored bytes; RevocationError (MALFORMED) for anything off-format."""

    def bad(problem: str) -> RevocationError:
        return RevocationError(RevocationReason.MALFORMED, f"revocation list: {problem}")

    try:
        doc = json_object_untrusted(data, max_bytes=MAX_LIST_BYTES, what="revocation list")
    except RecordError as exc:
        raise RevocationError(RevocationReason.MALFORMED, str(exc)) from None
    if set(doc) != _FIELDS:
        missing = sorted(_FIELDS - set(doc))
        extra = sorted(str(k)[:20] for k in set(doc) - _FIELDS)[:3]
        raise bad(f"fields wrong (missing {missing}, unknown {extra})")
    if type(doc["version"]) is not int or doc["version"] != REVOCATION_VERSION:
        raise bad(f"version must be {REVOCATION_VERSION}")
    generation = doc["generation"]
    if type(generation) is not int or not 1 <= generation <= MAX_GENERATION:
        raise bad(f"generation must be an integer from 1 to {MAX_GENERATION}")
    serials = doc["serials"]
    if not isinstance(serials, list) or len(serials) > MAX_SERIALS:
        raise bad(f"serials must be a list of at most {MAX_SERIALS}")
    if not all(is_serial(s) for s in serials):
        raise bad("every serial must be 32 lower-case hex digits")
    if serials != sorted(set(serials)):  # one spelling per list: sorted, no repeats
        raise bad("serials must be sorted and unique")
    issuer = doc["issuer"]
    if not isinstance(issuer, str) or not _KEY_ID_RE.match(issuer):
        raise bad("issuer must be 16 lower-case hex digits (a CA key id)")
    try:
        signature = b64_untrusted(doc["signature"], SIGNATURE_BYTES, "signature")
    except CertificateError as exc:
        raise bad(str(exc)) from None
    return RevocationList(generation, frozenset(serials), issuer, signature)


def verify_revocation_list(anchor: TrustAnchor, key: str, revoked: RevocationList) -> None:
    """RevocationError (UNTRUSTED) unless a trust anchor key signed exactly this list under `key`."""
    public = anchor.keys.get(revoked.issuer)
    if public is None:
        raise RevocationError(RevocationReason.UNTRUSTED,
                              f"revocation list signed by CA key {revoked.issuer}, which is not a trust anchor")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(revoked.signature, revoked.signed_bytes(key))
    except InvalidSignature:
        raise RevocationError(RevocationReason.UNTRUSTED,
                              f"CA signature of the revocation list at {key} does not verify") from None


class Revocations:
    """The newest verified revocation list this host knows; it never goes back to an older one.

    offer() takes a list read from etcd; accepted lists are saved (state_dir/revoked.json,
    the signed bytes as stored in etcd, re-verified when read back) so a restart, or a list
    deleted from etcd, un-revokes nothing. `ignored` counts refused lists by reason.
    """

    def __init__(self, anchor: TrustAnchor, key: str, saved: Path) -> None:
        self.anchor = anchor
        self.key = key
        self._saved = saved
        self.current: RevocationList | None = None
        self.ignored: Counter[RevocationReason] = Counter()
        self._last_refused: bytes | None = None

    def is_revoked(self, serial: str) -> bool:
        return self.current is not None and serial in self.current.serials

    def load_saved(self) -> str | None:
        """Take the saved list back; a problem to report if the file is unusable (then ignored)."""
        try:
            doc = read_json(self._saved)
        except StateError as exc:
            return f"saved revocation list: {exc}"
        if doc is None:
            return None
        try:
            revoked = parse_revocation_list_untrusted(canonical_json(doc) if isinstance(doc, dict) else b"[]")
            verify_revocation_list(self.anchor, self.key, revoked)
        except RevocationError as exc:
            return f"saved revocation list {self._saved} ignored: {exc}"
        self.current = revoked
        return None

    def offer(self, data: bytes) -> bool:
        """Consider the list stored in etcd: True if it is newer than ours and now in force.

        RevocationError (counted in `ignored`, once per distinct refused value) if it is
        malformed, not signed by a trust anchor, or older than ours.
        """
        try:
            revoked = parse_revocation_list_untrusted(data)
            verify_revocation_list(self.anchor, self.key, revoked)
            if self.current is not None and revoked.generation < self.current.generation:
                raise RevocationError(RevocationReason.STALE, f"revocation list generation {revoked.generation} "
                                      f"is older than generation {self.current.generation} already in force")
        except RevocationError as exc:
            if data != self._last_refused:  # polled again and again: count each bad value once
                self._last_refused = data
                self.ignored[RevocationReason(exc.reason)] += 1
            raise
        self._last_refused = None
        if self.current is not None and revoked.generation == self.current.generation:
            return False
        self.current = revoked
        try:
            write_json_atomic(self._saved, revoked.to_dict())
        except StateError as exc:  # in force all the same; a restart reads it from etcd again
            log.warning("cannot save the revocation list: %s", exc)
        return True

    def status(self) -> dict[str, Any]:
        return {"generation": self.current.generation if self.current else None,
                "revoked": len(self.current.serials) if self.current else 0,
                "ignored_lists": {str(k): v for k, v in self.ignored.items()}}
