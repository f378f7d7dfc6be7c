"""This host's WireGuard key pair: made locally, kept 0600 from the first byte.

The private key never leaves the host: it is not logged and never written to
etcd; only the public key is published with the host's lease.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PrivateFormat, PublicFormat, NoEncryption

from overlayd.errors import ConfigError

KEY_BYTES = 32


@dataclass(frozen=True)
class KeyPair:
    private: bytes
    public: bytes

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public).decode()

    def __repr__(self) -> str:  # keep the private key out of logs and tracebacks
        return f"KeyPair(public={self.public_b64})"


def _from_private(private: bytes) -> KeyPair:
    key = X25519PrivateKey.from_private_bytes(private)
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return KeyPair(private=private, public=public)


def load_or_create(path: Path) -> KeyPair:
    """Read the base64 private key at `path`, or make one there (mode 0600 from creation)."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        key = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask says
            os.write(fd, base64.b64encode(key) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        return _from_private(key)
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"WireGuard private key {path} is readable by others: chmod 600 it")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != KEY_BYTES:
        raise ConfigError(f"WireGuard private key {path} is not a base64 32-byte key")
    return _from_private(raw)
