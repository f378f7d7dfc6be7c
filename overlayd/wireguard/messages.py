"""WireGuard's four message layouts (whitepaper 5.4): parsing untrusted bytes and packing our own.

The first byte is the type and the next three are zero, so all four are read as one
little-endian u32, as wireguard-go does: a non-zero reserved byte makes an unknown type.
"""

import struct
from dataclasses import dataclass

from overlayd.wireguard.constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MAC_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    RESPONSE_SIZE,
)

TYPE = struct.Struct("<I")
INITIATION = struct.Struct("<II32s48s28s16s16s")
RESPONSE = struct.Struct("<III32s16s16s16s")
COOKIE_REPLY = struct.Struct("<II24s32s")
TRANSPORT_HEADER = struct.Struct("<IIQ")
assert (INITIATION.size, RESPONSE.size, COOKIE_REPLY.size) == (INITIATION_SIZE, RESPONSE_SIZE, COOKIE_REPLY_SIZE)

_NO_MACS = bytes(2 * MAC_SIZE)


@dataclass(frozen=True, slots=True)
class Initiation:
    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes


@dataclass(frozen=True, slots=True)
class Response:
    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes


@dataclass(frozen=True, slots=True)
class CookieReply:
    receiver: int
    nonce: bytes
    encrypted_cookie: bytes


def parse_initiation_untrusted(data: bytes) -> Initiation | None:
    if len(data) != INITIATION_SIZE:
        return None
    kind, sender, ephemeral, static, timestamp, _mac1, _mac2 = INITIATION.unpack(data)
    return Initiation(sender, ephemeral, static, timestamp) if kind == MESSAGE_INITIATION else None


def parse_response_untrusted(data: bytes) -> Response | None:
    if len(data) != RESPONSE_SIZE:
        return None
    kind, sender, receiver, ephemeral, nothing, _mac1, _mac2 = RESPONSE.unpack(data)
    return Response(sender, receiver, ephemeral, nothing) if kind == MESSAGE_RESPONSE else None


def parse_cookie_reply_untrusted(data: bytes) -> CookieReply | None:
    if len(data) != COOKIE_REPLY_SIZE:
        return None
    kind, receiver, nonce, cookie = COOKIE_REPLY.unpack(data)
    return CookieReply(receiver, nonce, cookie) if kind == MESSAGE_COOKIE_REPLY else None


def pack_initiation(msg: Initiation) -> bytearray:
    """Message with zeroed MACs; CookieGenerator.add_macs fills them in place."""
    buf = bytearray(INITIATION_SIZE)
    INITIATION.pack_into(
        buf, 0, MESSAGE_INITIATION, msg.sender, msg.ephemeral, msg.encrypted_static, msg.encrypted_timestamp,
        _NO_MACS[:MAC_SIZE], _NO_MACS[MAC_SIZE:],
    )
    return buf


def pack_response(msg: Response) -> bytearray:
    buf = bytearray(RESPONSE_SIZE)
    RESPONSE.pack_into(
        buf, 0, MESSAGE_RESPONSE, msg.sender, msg.receiver, msg.ephemeral, msg.encrypted_nothing,
        _NO_MACS[:MAC_SIZE], _NO_MACS[MAC_SIZE:],
    )
    return buf


def pack_cookie_reply(msg: CookieReply) -> bytes:
    return COOKIE_REPLY.pack(MESSAGE_COOKIE_REPLY, msg.receiver, msg.nonce, msg.encrypted_cookie)


def sender_index(handshake_message: bytes) -> int:
    """Sender field of an initiation or response (same offset in both)."""
    return TYPE.unpack_from(handshake_message, 4)[0]
