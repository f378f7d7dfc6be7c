"""WireGuard's primitives: BLAKE2s HASH/MAC, HMAC-BLAKE2s KDF, ChaCha20-Poly1305 AEAD and X25519.

All functions are pure; randomness (for new private keys) is passed in.
"""

import hashlib
import hmac
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from overlayd.wireguard.constants import KEY_SIZE, MAC_SIZE
from overlayd.wireguard.errors import InvalidKeyError

RandomBytes = Callable[[int], bytes]
BytesLike = bytes | bytearray | memoryview

_blake2s = hashlib.blake2s
_NONCE = struct.Struct("<4xQ")
_ZERO_KEY = bytes(KEY_SIZE)


def hash_(*parts: BytesLike) -> bytes:
    """HASH(a || b || ...): unkeyed BLAKE2s-256."""
    h = _blake2s()
    for part in parts:
        h.update(part)
    return h.digest()


def mac(key: bytes, data: BytesLike) -> bytes:
    """MAC(key, data): keyed BLAKE2s with a 16-byte digest."""
    return _blake2s(data, key=key, digest_size=MAC_SIZE).digest()


def hmac_(key: bytes, data: bytes) -> bytes:
    """HMAC(key, data) over BLAKE2s-256 (block size 64), as the KDF needs."""
    return hmac.digest(key, data, _blake2s)


def kdf1(key: bytes, data: bytes) -> bytes:
    prk = hmac_(key, data)
    return hmac_(prk, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    prk = hmac_(key, data)
    t1 = hmac_(prk, b"\x01")
    return t1, hmac_(prk, t1 + b"\x02")


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    prk = hmac_(key, data)
    t1 = hmac_(prk, b"\x01")
    t2 = hmac_(prk, t1 + b"\x02")
    return t1, t2, hmac_(prk, t2 + b"\x03")


def counter_nonce(counter: int) -> bytes:
    """The 96-bit AEAD nonce: 32 zero bits then the 64-bit little-endian counter."""
    return _NONCE.pack(counter)


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, associated_data: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(_NONCE.pack(counter), plaintext, associated_data)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, associated_data: bytes) -> bytes | None:
    """Plaintext, or None when the tag does not verify."""
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE.pack(counter), ciphertext, associated_data)
    except InvalidTag:
        return None


def check_key(key: bytes, what: str) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise InvalidKeyError(f"{what} must be {KEY_SIZE} bytes")
    return bytes(key)


def clamp_private_key(raw: bytes) -> bytes:
    """Curve25519 clamping, so stored keys look like `wg genkey`'s."""
    b = bytearray(check_key(raw, "private key"))
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def generate_private_key(rng: RandomBytes) -> bytes:
    return clamp_private_key(rng(KEY_SIZE))


def private_key_object(private_key: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(check_key(private_key, "private key"))


def public_key(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


def dh(private: X25519PrivateKey, peer_public: bytes) -> bytes | None:
    """X25519 shared secret, or None for a low-order point (all-zero result), which WireGuard rejects."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:  # OpenSSL refuses all-zero outputs (low-order points)
        return None
    return None if hmac.compare_digest(shared, _ZERO_KEY) else shared


def constant_time_equal(a: BytesLike, b: BytesLike) -> bool:
    """For anything secret (keys, DH results, MACs): the time taken does not depend on where they differ."""
    return hmac.compare_digest(a, b)


# Any clamped scalar maps exactly the low-order points to the all-zero result; this one is public.
_PROBE = X25519PrivateKey.from_private_bytes(clamp_private_key(bytes(range(1, 33))))


def is_low_order(public_key: bytes) -> bool:
    """Whether X25519 with this public key gives no shared secret whatever our private key."""
    return dh(_PROBE, public_key) is None
