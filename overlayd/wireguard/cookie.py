"""mac1/mac2 and cookie replies (whitepaper 5.4.4, 5.4.7).

CookieChecker is the receiving side of one interface: it verifies mac1 against our own public
key, verifies mac2 against the cookie we would give the sender, and writes cookie replies.
CookieGenerator is the sending side toward one peer: it adds mac1/mac2 to our handshake
messages and takes in the cookies that peer sends us.
"""

import enum

from overlayd.wireguard import crypto
from overlayd.wireguard.constants import COOKIE_REFRESH_TIME, MAC_SIZE, REKEY_TIMEOUT
from overlayd.wireguard.crypto import RandomBytes
from overlayd.wireguard.messages import CookieReply, pack_cookie_reply, sender_index
from overlayd.wireguard.xchacha import XSealer, xaead_decrypt

LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
_SECRET_SIZE = 32
# Replies opened per handshake message we sent. The peer answers one message with at most one
# reply, so a few allow for duplicates; the cap bounds what forged replies on a known index
# cost (an on-path forger can at worst make us wait for the next retransmit).
MAX_REPLY_ATTEMPTS = 4


class ReplyOutcome(enum.Enum):
    ACCEPTED = "accepted"
    UNEXPECTED = "unexpected"  # no message of ours awaits a reply: not even decrypted
    BAD = "bad"  # decrypted and refused


def _mac1_region(msg: bytes | bytearray) -> memoryview:
    return memoryview(msg)[: len(msg) - 2 * MAC_SIZE]


def _mac2_region(msg: bytes | bytearray) -> memoryview:
    return memoryview(msg)[: len(msg) - MAC_SIZE]


def mac1_of(msg: bytes | bytearray) -> bytes:
    return bytes(msg[len(msg) - 2 * MAC_SIZE : len(msg) - MAC_SIZE])


class CookieChecker:
    """Responder-side checks for one local static key."""

    __slots__ = ("_mac1_key", "_cookie_key", "_secret", "_secret_set", "_sealer")

    def __init__(self, local_public: bytes) -> None:
        self._mac1_key = crypto.hash_(LABEL_MAC1, local_public)
        self._cookie_key = crypto.hash_(LABEL_COOKIE, local_public)
        self._secret = b""
        self._secret_set = 0.0
        self._sealer: XSealer | None = None  # made with the first secret

    def check_mac1(self, msg: bytes) -> bool:
        expected = crypto.mac(self._mac1_key, _mac1_region(msg))
        return crypto.constant_time_equal(expected, mac1_of(msg))

    def reply_unless_mac2(self, msg: bytes, source: bytes, now: float, rng: RandomBytes) -> bytes | None:
        """Under load: None if mac2 was made with the cookie `source` (IP and port) gets from
        the current secret, else the cookie reply that gives it one. The secret (and with it
        the sealing nonce prefix) is renewed every COOKIE_REFRESH_TIME; a message can carry no
        valid mac2 for a secret just made."""
        fresh = self._sealer is not None and now - self._secret_set <= COOKIE_REFRESH_TIME
        if self._sealer is None or not fresh:
            self._secret, self._secret_set = rng(_SECRET_SIZE), now
            self._sealer = XSealer(self._cookie_key, rng(XSealer.PREFIX_SIZE))
        cookie = crypto.mac(self._secret, source)
        if fresh and crypto.constant_time_equal(crypto.mac(cookie, _mac2_region(msg)), msg[len(msg) - MAC_SIZE :]):
            return None
        nonce, encrypted = self._sealer.seal(cookie, mac1_of(msg))
        return pack_cookie_reply(CookieReply(sender_index(msg), nonce, encrypted))


class CookieGenerator:
    """Initiator-side MACs toward one remote static key."""

    __slots__ = ("_mac1_key", "_cookie_key", "_cookie", "_cookie_set", "_last_mac1", "_last_sent", "_attempts")

    def __init__(self, remote_public: bytes) -> None:
        self._mac1_key = crypto.hash_(LABEL_MAC1, remote_public)
        self._cookie_key = crypto.hash_(LABEL_COOKIE, remote_public)
        self._cookie = b""
        self._cookie_set: float | None = None
        self._last_mac1: bytes | None = None  # None once answered: one cookie per message
        self._last_sent = 0.0
        self._attempts = 0

    def add_macs(self, msg: bytearray, now: float) -> None:
        """Fill mac1 and (while we hold a fresh cookie) mac2 in place."""
        end = len(msg)
        mac1 = crypto.mac(self._mac1_key, _mac1_region(msg))
        msg[end - 2 * MAC_SIZE : end - MAC_SIZE] = mac1
        self._last_mac1, self._last_sent, self._attempts = mac1, now, 0
        if self._cookie_set is not None and now - self._cookie_set <= COOKIE_REFRESH_TIME:
            msg[end - MAC_SIZE :] = crypto.mac(self._cookie, _mac2_region(msg))

    def consume_reply(self, reply: CookieReply, now: float) -> ReplyOutcome:
        """Accept a cookie bound (as AD) to the mac1 of our last handshake message, while that
        message is in flight (REKEY_TIMEOUT), once, opening at most MAX_REPLY_ATTEMPTS replies."""
        if self._last_mac1 is None or now - self._last_sent > REKEY_TIMEOUT or self._attempts >= MAX_REPLY_ATTEMPTS:
            return ReplyOutcome.UNEXPECTED
        self._attempts += 1
        cookie = xaead_decrypt(self._cookie_key, reply.nonce, reply.encrypted_cookie, self._last_mac1)
        if cookie is None:
            return ReplyOutcome.BAD
        self._cookie, self._cookie_set, self._last_mac1 = cookie, now, None
        return ReplyOutcome.ACCEPTED
