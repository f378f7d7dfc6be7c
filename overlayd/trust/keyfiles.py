"""Ed25519 key files: PEM (PKCS#8 private, SubjectPublicKeyInfo public), so openssl can read them.

Private keys are created 0600 from the first byte (O_CREAT|O_EXCL with that mode) and never
overwritten; loading one that others can read is refused. Public key files are written
atomically, 0644. Keys are identified by a key id: the first 8 bytes of SHA-256 over the
raw 32-byte public key, in hex.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from overlayd.errors import ConfigError, ConflictError

PUBLIC_KEY_BYTES = 32
# A PEM Ed25519 key is ~120 bytes; anything much bigger is not one of ours.
_MAX_KEY_FILE = 4096


_FIELD_PRIME = 2**255 - 19
# y coordinates (little-endian) of the 8 points of small order on edwards25519. A public key
# on one of them lets anyone forge signatures that OpenSSL accepts (the all-zero key verifies
# an all-zero signature on about one message in five), so a certificate must never carry one.
_SMALL_ORDER_Y = frozenset(
    int.from_bytes(bytes.fromhex(h), "little")
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    )
)


def is_weak_public_key(public: bytes) -> bool:
    """A small-order or non-canonically encoded Ed25519 public key (32 raw bytes)."""
    y = int.from_bytes(public, "little") & ((1 << 255) - 1)  # the top bit is the sign of x
    return y >= _FIELD_PRIME or y in _SMALL_ORDER_Y


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(public: bytes) -> str:
    """Short fingerprint of a raw public key (names a CA in certificates and logs)."""
    return hashlib.sha256(public).hexdigest()[:16]


def public_b64(public: bytes) -> str:
    return base64.b64encode(public).decode()


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def create_private_key(path: Path) -> Ed25519PrivateKey:
    """Make a new key at path (0600 from creation); ConflictError if the file exists."""
    key = Ed25519PrivateKey.generate()
    data = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise ConflictError(f"{path} already exists; refusing to overwrite a private key") from None
    except OSError as exc:
        raise ConfigError(f"cannot create private key {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask says
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as stream:
            data = stream.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > _MAX_KEY_FILE:
        raise ConfigError(f"{what} {path} is larger than {_MAX_KEY_FILE} bytes: not an Ed25519 PEM key")
    return data


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key; ConfigError if missing, readable by others or not one."""
    data = _read_key_file(path, "private key")
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"private key {path} is readable by others: chmod 600 it")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"private key {path} is not an Ed25519 key")
    return key


def load_or_create_private_key(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The key at path, made first if absent; the flag says whether it was just made."""
    if path.exists():
        return load_private_key(path), False
    return create_private_key(path), True


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key; ConfigError if missing or not one."""
    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY" in data:
        raise ConfigError(f"{path} holds a private key; give the public key file (.pub)")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"public key {path} is not an Ed25519 key")
    return key


def write_public_file(path: Path, data: bytes) -> None:
    """Replace path with data, mode 0644, atomically (a reader never sees half a file)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
