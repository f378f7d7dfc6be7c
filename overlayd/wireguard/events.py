"""What the core hands to its I/O shell: datagrams to send, packets for the TUN device, drop reasons."""

import enum
from dataclasses import dataclass
from typing import Any, Protocol

# A UDP address as the socket layer gives it: (host, port) or (host, port, flowinfo, scope_id).
Endpoint = tuple[Any, ...]
# An IP packet as the shell hands it over (segments cut from a TSO frame are views of one buffer).
Packet = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Datagram:
    """Send `data` in one UDP datagram to `addr`."""

    data: bytes | bytearray | memoryview
    addr: Endpoint


@dataclass(frozen=True, slots=True)
class DatagramBatch:
    """Datagrams of `size` bytes back to back in `data` (the last may be shorter), all to
    `addr`: one UDP GSO send (at most 64 datagrams, 65,507 bytes)."""

    data: memoryview
    size: int
    addr: Endpoint


@dataclass(frozen=True, slots=True)
class TunPacket:
    """Write `data` (an IP packet) to the TUN device; `peer` is the public key it came from."""

    data: bytes
    peer: bytes


Output = Datagram | DatagramBatch | TunPacket


class DatagramSink(Protocol):
    """Where send helpers put datagrams: a list[Datagram] or the receive path's list[Output]."""

    def append(self, item: Datagram | DatagramBatch, /) -> None: ...


class DropReason(enum.StrEnum):
    """Why a packet was discarded; the device counts them in `Device.drops`."""

    SHORT = "short"  # shorter than any message of its type
    UNKNOWN_TYPE = "unknown_type"
    BAD_SIZE = "bad_size"  # handshake message of the wrong length
    BAD_MAC = "bad_mac"  # mac1 does not verify
    NO_IDENTITY = "no_identity"  # handshake message while the interface has no private key
    COOKIE_SENT = "cookie_sent"  # under load without a valid mac2: answered with a cookie
    RATE_LIMITED = "rate_limited"
    BAD_HANDSHAKE = "bad_handshake"  # AEAD or DH failure inside a handshake message
    UNKNOWN_PEER = "unknown_peer"  # initiation from a static key we do not know
    HANDSHAKE_REPLAY = "handshake_replay"  # timestamp not newer than the last one
    HANDSHAKE_FLOOD = "handshake_flood"  # initiations closer than 1/50 s
    INVALID_STATE = "invalid_state"  # response to an initiation we are not waiting on
    UNKNOWN_INDEX = "unknown_index"
    BAD_COOKIE = "bad_cookie"
    UNEXPECTED_COOKIE = "unexpected_cookie"  # cookie reply when none is awaited (or past the cap)
    EXPIRED_KEY = "expired_key"  # transport packet for a keypair past REJECT_AFTER_TIME
    BAD_AEAD = "bad_aead"
    REPLAY = "replay"
    BAD_INNER_PACKET = "bad_inner_packet"  # decrypted payload is not a valid IPv4/IPv6 packet
    NOT_ALLOWED_IP = "not_allowed_ip"  # inner source not in the sending peer's allowed IPs
    NO_ROUTE = "no_route"  # outbound packet to an address no peer is allowed
    NO_ENDPOINT = "no_endpoint"  # nowhere to send: the peer's endpoint is unknown
    STAGED_OVERFLOW = "staged_overflow"  # queue of packets waiting for a handshake was full
    HANDSHAKE_GAVE_UP = "handshake_gave_up"  # queued packets discarded after REKEY_ATTEMPT_TIME
    MISROUTED = "misrouted"  # reached a worker process other than the one its session belongs to
