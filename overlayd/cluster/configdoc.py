"""The value stored at {prefix}/config: the cluster config, optionally with a signature.

    {"network": "10.244.0.0/16", "subnet_len": 24, "backend": {...},
     "signature": {...}}                      # optional; what it holds is the trust layer's

The cluster layer only splits the signature off and hands it to an optional ConfigVerifier
(overlayd/trust/configsig.py); readers without one ignore it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ipam.config import MAX_JSON_BYTES, ClusterConfig
from ipam.errors import InvalidConfig
from overlayd.cluster.errors import RecordError
from overlayd.cluster.records import json_object_untrusted
from overlayd.errors import ConfigError

SIGNATURE_FIELD = "signature"

# (full etcd key, config) -> the signature object stored with it.
ConfigSigner = Callable[[str, ClusterConfig], dict[str, Any]]
# (full etcd key, parsed config, the signature object or None) -> None, or raises (never applied).
ConfigVerifier = Callable[[str, ClusterConfig, object], None]


def encode_config(config: ClusterConfig, signature: dict[str, Any] | None = None) -> bytes:
    doc = config.to_dict() if signature is None else {**config.to_dict(), SIGNATURE_FIELD: signature}
    return json.dumps(doc, sort_keys=True).encode()


def decode_config_untrusted(data: bytes, *, where: str) -> tuple[ClusterConfig, object]:
    """The config and its signature object (None if unsigned); ConfigError naming `where` if unusable."""
    try:
        doc = json_object_untrusted(data, max_bytes=MAX_JSON_BYTES, what="cluster config")
        signature = doc.pop(SIGNATURE_FIELD, None)
        return ClusterConfig.from_dict_untrusted(doc), signature
    except (RecordError, InvalidConfig) as exc:
        raise ConfigError(f"cluster config at {where} is invalid: {exc}") from None
