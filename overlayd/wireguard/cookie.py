"""mac1/mac2 and cookie replies (whitepaper 5.4.4, 5.4.7).

CookieChecker is the receiving side of one interface: it verifies mac1 against our own public
key, verifies mac2 against the cookie we would give the sender, and writes cookie replies.
CookieGenerator is the sending side toward one peer: it adds mac1/mac2 to our handshake
messages and takes in the cookies that peer sends us.
"""

from overlayd.wireguard import crypto
from overlayd.wireguard.constants import COOKIE_REFRESH_TIME, MAC_SIZE
from overlayd.wireguard.crypto import RandomBytes
from overlayd.wireguard.messages import CookieReply, pack_cookie_reply
from overlayd.wireguard.xchacha import xaead_decrypt, xaead_encrypt

LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
_NONCE_SIZE = 24
_SECRET_SIZE = 32


def _mac1_region(msg: bytes | bytearray) -> memoryview:
    return memoryview(msg)[: len(msg) - 2 * MAC_SIZE]


def _mac2_region(msg: bytes | bytearray) -> memoryview:
    return memoryview(msg)[: len(msg) - MAC_SIZE]


def mac1_of(msg: bytes | bytearray) -> bytes:
    return bytes(msg[len(msg) - 2 * MAC_SIZE : len(msg) - MAC_SIZE])


class CookieChecker:
    """Responder-side checks for one local static key."""

    __slots__ = ("_mac1_key", "_cookie_key", "_secret", "_secret_set")

    def __init__(self, local_public: bytes) -> None:
        self._mac1_key = crypto.hash_(LABEL_MAC1, local_public)
        self._cookie_key = crypto.hash_(LABEL_COOKIE, local_public)
        self._secret = b""
        self._secret_set: float | None = None

    def check_mac1(self, msg: bytes) -> bool:
        expected = crypto.mac(self._mac1_key, _mac1_region(msg))
        return crypto.constant_time_equal(expected, mac1_of(msg))

    def _secret_fresh(self, now: float) -> bool:
        return self._secret_set is not None and now - self._secret_set <= COOKIE_REFRESH_TIME

    def check_mac2(self, msg: bytes, source: bytes, now: float) -> bool:
        """mac2 is valid only if made with the cookie of the current (unexpired) secret."""
        if not self._secret_fresh(now):
            return False
        cookie = crypto.mac(self._secret, source)
        expected = crypto.mac(cookie, _mac2_region(msg))
        return crypto.constant_time_equal(expected, bytes(msg[len(msg) - MAC_SIZE :]))

    def create_reply(self, msg: bytes, receiver: int, source: bytes, now: float, rng: RandomBytes) -> bytes:
        """Cookie reply to `msg`; the secret is rotated every COOKIE_REFRESH_TIME."""
        if not self._secret_fresh(now):
            self._secret = rng(_SECRET_SIZE)
            self._secret_set = now
        cookie = crypto.mac(self._secret, source)
        nonce = rng(_NONCE_SIZE)
        encrypted = xaead_encrypt(self._cookie_key, nonce, cookie, mac1_of(msg))
        return pack_cookie_reply(CookieReply(receiver, nonce, encrypted))


class CookieGenerator:
    """Initiator-side MACs toward one remote static key."""

    __slots__ = ("_mac1_key", "_cookie_key", "_cookie", "_cookie_set", "_last_mac1")

    def __init__(self, remote_public: bytes) -> None:
        self._mac1_key = crypto.hash_(LABEL_MAC1, remote_public)
        self._cookie_key = crypto.hash_(LABEL_COOKIE, remote_public)
        self._cookie = b""
        self._cookie_set: float | None = None
        self._last_mac1: bytes | None = None

    def add_macs(self, msg: bytearray, now: float) -> None:
        """Fill mac1 and (while we hold a fresh cookie) mac2 in place."""
        end = len(msg)
        mac1 = crypto.mac(self._mac1_key, _mac1_region(msg))
        msg[end - 2 * MAC_SIZE : end - MAC_SIZE] = mac1
        self._last_mac1 = mac1
        if self._cookie_set is not None and now - self._cookie_set <= COOKIE_REFRESH_TIME:
            msg[end - MAC_SIZE :] = crypto.mac(self._cookie, _mac2_region(msg))

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        """Accept a cookie bound (as AD) to the mac1 of our last handshake message."""
        if self._last_mac1 is None:
            return False
        cookie = xaead_decrypt(self._cookie_key, reply.nonce, reply.encrypted_cookie, self._last_mac1)
        if cookie is None:
            return False
        self._cookie = cookie
        self._cookie_set = now
        return True
