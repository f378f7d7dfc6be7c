"""Policy records signed by the cluster CA (trust mode), after the signed cluster config.

With `ca_file` set, an etcd writer could otherwise open any pod: add a policy that allows
everything, loosen one, delete one, or write back an older version. So in trust mode:

- `overlayctl policy apply --ca-dir DIR` signs each policy with the CA key, and
  `overlayctl policy del --ca-dir DIR` writes a signed tombstone instead of deleting the key.
  The record gains

      "signature": {"issuer": "<16 hex: CA key id>", "generation": <int>, "sig": "<base64, 64 bytes>"}

  "sig" is the CA's Ed25519 signature over POLICY_DOMAIN + the canonical JSON of
  {"key": <full etcd key>, "generation": ..., "policy": <canonical document, null for a
  tombstone>}: bound to its key (no moving it to another name or cluster prefix), to
  exactly what the daemons enforce, and to a generation (the signer's clock in
  nanoseconds) that only grows.
- Daemons with a trust anchor enforce only signed policies, keep for each name the
  highest generation they accepted (also across restarts, in the policy cache), refuse an
  older one (a replay) and keep enforcing what they had when a record is refused, changed
  without a signature or deleted without a signed tombstone: a policy goes away only by
  `policy del --ca-dir`. What is refused is counted and makes health degraded.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from overlayd.cluster.errors import RecordError
from overlayd.trust.certs import SIGNATURE_BYTES, TrustAnchor, b64_untrusted, canonical_json
from overlayd.trust.errors import CertificateError
from overlayd.trust.keyfiles import key_id, raw_public

POLICY_DOMAIN = b"overlayd network policy v1\n"
_KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")
MAX_GENERATION = 2**63 - 1


def signed_bytes(key: str, generation: int, doc: dict[str, Any] | None) -> bytes:
    return POLICY_DOMAIN + canonical_json({"key": key, "generation": generation, "policy": doc})


class PolicySigner:
    """The CA's signature for a policy document (or a tombstone: doc None) stored under a key."""

    def __init__(self, ca_key: Ed25519PrivateKey) -> None:
        self._key = ca_key
        self.issuer = key_id(raw_public(ca_key.public_key()))

    def __repr__(self) -> str:  # never the private key
        return f"PolicySigner(issuer={self.issuer})"

    def __call__(self, key: str, doc: dict[str, Any] | None, generation: int) -> dict[str, Any]:
        signature = self._key.sign(signed_bytes(key, generation, doc))
        return {"issuer": self.issuer, "generation": generation, "sig": base64.b64encode(signature).decode()}


class PolicyVerifier:
    """Accepts a policy record only with a signature by a trust anchor key; returns its generation."""

    def __init__(self, anchor: TrustAnchor) -> None:
        self.anchor = anchor

    def __call__(self, key: str, doc: dict[str, Any] | None, signature: object) -> int:
        if signature is None:
            raise RecordError(f"policy at {key} is not signed by the cluster CA (`overlayctl policy apply --ca-dir`)",
                              reason="unsigned")
        if not isinstance(signature, dict) or set(signature) != {"issuer", "generation", "sig"}:
            raise RecordError(f"policy at {key}: signature must be an object with issuer, generation and sig")
        issuer, generation = signature["issuer"], signature["generation"]
        if not isinstance(issuer, str) or not _KEY_ID_RE.match(issuer):
            raise RecordError(f"policy at {key}: signature issuer must be 16 lower-case hex digits")
        if isinstance(generation, bool) or not isinstance(generation, int) or not 0 <= generation <= MAX_GENERATION:
            raise RecordError(f"policy at {key}: signature generation must be a whole number")
        public = self.anchor.keys.get(issuer)
        if public is None:
            raise RecordError(f"policy at {key} is signed by CA key {issuer}, which is not a trust anchor",
                              reason="untrusted_cert")
        try:
            sig = b64_untrusted(signature["sig"], SIGNATURE_BYTES, "sig")
            Ed25519PublicKey.from_public_bytes(public).verify(sig, signed_bytes(key, generation, doc))
        except (CertificateError, InvalidSignature):
            raise RecordError(f"policy at {key}: CA signature does not match the policy", reason="bad_signature") from None
        return generation
