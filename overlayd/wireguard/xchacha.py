"""XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha) for cookie replies.

`cryptography` has no XChaCha, so the 24-byte nonce is reduced with HChaCha20 (pure Python:
one 20-round core per cookie, cheap) and the rest is the library's ChaCha20-Poly1305.
"""

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
_M = 0xFFFFFFFF
_WORDS8 = struct.Struct("<8I")
_WORDS4 = struct.Struct("<4I")


def _quarter_round(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & _M
    x = s[d] ^ s[a]
    s[d] = ((x << 16) | (x >> 16)) & _M
    s[c] = (s[c] + s[d]) & _M
    x = s[b] ^ s[c]
    s[b] = ((x << 12) | (x >> 20)) & _M
    s[a] = (s[a] + s[b]) & _M
    x = s[d] ^ s[a]
    s[d] = ((x << 8) | (x >> 24)) & _M
    s[c] = (s[c] + s[d]) & _M
    x = s[b] ^ s[c]
    s[b] = ((x << 7) | (x >> 25)) & _M


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20: the ChaCha20 core without the final feed-forward; returns words 0-3 and 12-15."""
    if len(key) != 32 or len(nonce16) != 16:
        raise ValueError("hchacha20 needs a 32-byte key and a 16-byte nonce")
    s = [*_SIGMA, *_WORDS8.unpack(key), *_WORDS4.unpack(nonce16)]
    for _ in range(10):
        _quarter_round(s, 0, 4, 8, 12)
        _quarter_round(s, 1, 5, 9, 13)
        _quarter_round(s, 2, 6, 10, 14)
        _quarter_round(s, 3, 7, 11, 15)
        _quarter_round(s, 0, 5, 10, 15)
        _quarter_round(s, 1, 6, 11, 12)
        _quarter_round(s, 2, 7, 8, 13)
        _quarter_round(s, 3, 4, 9, 14)
    return _WORDS8.pack(*s[0:4], *s[12:16])


def _subkey_and_nonce(key: bytes, nonce24: bytes) -> tuple[ChaCha20Poly1305, bytes]:
    if len(nonce24) != 24:
        raise ValueError("XChaCha20-Poly1305 needs a 24-byte nonce")
    return ChaCha20Poly1305(hchacha20(key, nonce24[:16])), b"\x00\x00\x00\x00" + nonce24[16:]


def xaead_encrypt(key: bytes, nonce24: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    aead, nonce = _subkey_and_nonce(key, nonce24)
    return aead.encrypt(nonce, plaintext, associated_data)


def xaead_decrypt(key: bytes, nonce24: bytes, ciphertext: bytes, associated_data: bytes) -> bytes | None:
    """Plaintext, or None when the tag does not verify."""
    aead, nonce = _subkey_and_nonce(key, nonce24)
    try:
        return aead.decrypt(nonce, ciphertext, associated_data)
    except InvalidTag:
        return None
