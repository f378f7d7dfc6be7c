"""The Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s handshake as WireGuard uses it (whitepaper 5.4).

Pure functions over a SymmetricState (chaining key + transcript hash). They know nothing of
WireGuard's framing, indices or MACs (see messages.py), so the same code runs the published
Noise test vectors with another prologue and other payloads.

Initiator -> responder:  e, es, s, ss  (payload: TAI64N timestamp)
Responder -> initiator:  e, ee, se, psk (payload: empty)
"""

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from overlayd.wireguard import crypto

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
NO_PRESHARED_KEY = bytes(32)


class SymmetricState:
    """Noise's SymmetricState without a stored cipher key: each key is used for one message at nonce 0."""

    __slots__ = ("chaining_key", "hash")

    def __init__(self, chaining_key: bytes, hash_: bytes) -> None:
        self.chaining_key = chaining_key
        self.hash = hash_

    @classmethod
    def initial(cls, prologue: bytes = IDENTIFIER) -> "SymmetricState":
        # The protocol name is longer than HASHLEN, so h = HASH(name) and ck = h (Noise 5.2).
        ck = crypto.hash_(CONSTRUCTION)
        return cls(ck, crypto.hash_(ck, prologue))

    def copy(self) -> "SymmetricState":
        return SymmetricState(self.chaining_key, self.hash)

    def mix_hash(self, data: bytes) -> None:
        self.hash = crypto.hash_(self.hash, data)

    def mix_key(self, data: bytes) -> None:
        self.chaining_key = crypto.kdf1(self.chaining_key, data)

    def mix_key_for_cipher(self, data: bytes) -> bytes:
        self.chaining_key, key = crypto.kdf2(self.chaining_key, data)
        return key

    def mix_key_and_hash(self, data: bytes) -> bytes:
        self.chaining_key, tau, key = crypto.kdf3(self.chaining_key, data)
        self.mix_hash(tau)
        return key

    def encrypt_and_hash(self, key: bytes, plaintext: bytes) -> bytes:
        ciphertext = crypto.aead_encrypt(key, 0, plaintext, self.hash)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, key: bytes, ciphertext: bytes) -> bytes | None:
        plaintext = crypto.aead_decrypt(key, 0, ciphertext, self.hash)
        if plaintext is not None:
            self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        """(initiator->responder key, responder->initiator key)."""
        return crypto.kdf2(self.chaining_key, b"")


def initiator_start(remote_static: bytes, prologue: bytes = IDENTIFIER) -> SymmetricState:
    """State after the pre-message `<- s` (the responder's static key is known in advance)."""
    state = SymmetricState.initial(prologue)
    state.mix_hash(remote_static)
    return state


# The responder's start is the same computation over its own public key.
responder_start = initiator_start


def write_initiation(
    state: SymmetricState,
    *,
    ephemeral: X25519PrivateKey,
    static_public: bytes,
    remote_static: bytes,
    static_static: bytes,
    payload: bytes,
) -> tuple[bytes, bytes, bytes] | None:
    """-> e, es, s, ss, payload. Returns (ephemeral public, encrypted static, encrypted payload)."""
    e_pub = crypto.public_key(ephemeral)
    state.mix_hash(e_pub)
    state.mix_key(e_pub)  # psk handshakes mix e into the key as well (Noise 9.2)
    es = crypto.dh(ephemeral, remote_static)
    if es is None:
        return None
    encrypted_static = state.encrypt_and_hash(state.mix_key_for_cipher(es), static_public)
    encrypted_payload = state.encrypt_and_hash(state.mix_key_for_cipher(static_static), payload)
    return e_pub, encrypted_static, encrypted_payload


def read_initiation_static(
    state: SymmetricState, *, static_private: X25519PrivateKey, remote_ephemeral: bytes, encrypted_static: bytes
) -> bytes | None:
    """First half of reading an initiation: returns the initiator's static key, to find the peer."""
    state.mix_hash(remote_ephemeral)
    state.mix_key(remote_ephemeral)
    es = crypto.dh(static_private, remote_ephemeral)
    if es is None:
        return None
    return state.decrypt_and_hash(state.mix_key_for_cipher(es), encrypted_static)


def read_initiation_payload(state: SymmetricState, *, static_static: bytes, encrypted_payload: bytes) -> bytes | None:
    """Second half: `ss` with the peer's precomputed static-static secret, then the payload."""
    return state.decrypt_and_hash(state.mix_key_for_cipher(static_static), encrypted_payload)


def write_response(
    state: SymmetricState,
    *,
    ephemeral: X25519PrivateKey,
    remote_ephemeral: bytes,
    remote_static: bytes,
    preshared_key: bytes,
    payload: bytes,
) -> tuple[bytes, bytes] | None:
    """<- e, ee, se, psk, payload. Returns (ephemeral public, encrypted payload)."""
    e_pub = crypto.public_key(ephemeral)
    state.mix_hash(e_pub)
    state.mix_key(e_pub)
    ee = crypto.dh(ephemeral, remote_ephemeral)
    se = crypto.dh(ephemeral, remote_static)
    if ee is None or se is None:
        return None
    state.mix_key(ee)
    state.mix_key(se)
    key = state.mix_key_and_hash(preshared_key)
    return e_pub, state.encrypt_and_hash(key, payload)


def read_response(
    state: SymmetricState,
    *,
    ephemeral: X25519PrivateKey,
    static_private: X25519PrivateKey,
    remote_ephemeral: bytes,
    preshared_key: bytes,
    encrypted_payload: bytes,
) -> bytes | None:
    """Initiator's side of the response; the payload on success."""
    state.mix_hash(remote_ephemeral)
    state.mix_key(remote_ephemeral)
    ee = crypto.dh(ephemeral, remote_ephemeral)
    se = crypto.dh(static_private, remote_ephemeral)
    if ee is None or se is None:
        return None
    state.mix_key(ee)
    state.mix_key(se)
    key = state.mix_key_and_hash(preshared_key)
    return state.decrypt_and_hash(key, encrypted_payload)
