"""The cluster config signed by the cluster CA.

Every daemon builds its network from {prefix}/config, so with a trust anchor an etcd writer
could otherwise renumber the cluster or move it to another VNI. `overlayctl network init
--ca-dir DIR` stores the config with a "signature" field (cluster/configdoc.py):

    "signature": {"issuer": "<16 hex: CA key id>", "sig": "<base64, 64 bytes>"}

"sig" is the CA key's Ed25519 signature over CONFIG_DOMAIN + the canonical JSON of

    {"key": "<full etcd key, e.g. /overlayd/network/config>", "config": {<ClusterConfig.to_dict()>}}

rebuilt by the verifier from the parsed config, so only what a daemon acts on is covered
and a config cannot be moved to another cluster prefix. The domain string differs from the
certificate's, so a CA signature over one can never pass as the other.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ipam.config import ClusterConfig
from overlayd.trust.certs import SIGNATURE_BYTES, TrustAnchor, b64_untrusted, canonical_json
from overlayd.trust.errors import CertificateError, UntrustedConfig
from overlayd.trust.keyfiles import key_id, raw_public

CONFIG_DOMAIN = b"overlayd cluster config v1\n"
_KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")


def config_signed_bytes(key: str, config: ClusterConfig) -> bytes:
    return CONFIG_DOMAIN + canonical_json({"key": key, "config": config.to_dict()})


class ConfigSigner:
    """The CA's signature object for a config stored under a key (a cluster ConfigSigner)."""

    def __init__(self, ca_key: Ed25519PrivateKey) -> None:
        self._key = ca_key
        self.issuer = key_id(raw_public(ca_key.public_key()))

    def __repr__(self) -> str:  # never the private key
        return f"ConfigSigner(issuer={self.issuer})"

    def __call__(self, key: str, config: ClusterConfig) -> dict[str, Any]:
        signature = self._key.sign(config_signed_bytes(key, config))
        return {"issuer": self.issuer, "sig": base64.b64encode(signature).decode()}


class ConfigVerifier:
    """Accepts a config only with a signature by a trust anchor key (a cluster ConfigVerifier)."""

    def __init__(self, anchor: TrustAnchor) -> None:
        self.anchor = anchor

    def __call__(self, key: str, config: ClusterConfig, signature: object) -> None:
        if signature is None:
            raise UntrustedConfig(f"cluster config at {key} is not signed by the cluster CA")
        if not isinstance(signature, dict) or set(signature) != {"issuer", "sig"}:
            raise UntrustedConfig(f"cluster config at {key}: signature must be an object with issuer and sig")
        issuer = signature["issuer"]
        if not isinstance(issuer, str) or not _KEY_ID_RE.match(issuer):
            raise UntrustedConfig(f"cluster config at {key}: signature issuer must be 16 lower-case hex digits")
        public = self.anchor.keys.get(issuer)
        if public is None:
            raise UntrustedConfig(f"cluster config at {key} is signed by CA key {issuer}, which is not a trust anchor")
        try:
            sig = b64_untrusted(signature["sig"], SIGNATURE_BYTES, "sig")
            Ed25519PublicKey.from_public_bytes(public).verify(sig, config_signed_bytes(key, config))
        except (CertificateError, InvalidSignature):
            raise UntrustedConfig(f"cluster config at {key}: CA signature does not match the config") from None
