"""WireGuard on the wire, for the scapy tests: reading captured messages, crafting and injecting them.

The message layout, mac1 and mac2 are computed here from the whitepaper (section 5.4), not with
the engine's own code, so the tests check the engine against an independent reading of the spec.
(Only cookie decryption borrows the project's XChaCha20-Poly1305, which `cryptography` lacks; it
is checked against the draft's vectors in tests/unit/test_wg_vectors.py.)

Sockets belong to the network namespace of the thread that creates them: injection runs in a
short-lived thread that joins the target namespace first (setns moves only the calling thread).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from scapy.layers.inet import IP, UDP
from scapy.packet import Packet, Raw

from overlayd.pods.nsutil import CLONE_NEWNET, setns

WG_PORT = 51820
INITIATION, RESPONSE, COOKIE_REPLY, TRANSPORT = 1, 2, 3, 4
INITIATION_SIZE, RESPONSE_SIZE, COOKIE_REPLY_SIZE = 148, 92, 64
TRANSPORT_HEADER, TAG = 16, 16
MAC_SIZE = 16

T = TypeVar("T")


@dataclass(frozen=True)
class WgDatagram:
    """One UDP datagram seen on the underlay (deduplicated across bridge ports)."""

    src: str
    sport: int
    dst: str
    dport: int
    size: int  # from the UDP length field: the capture may be cut at its snap length
    data: bytes  # what the capture holds of the payload
    time: float

    @property
    def kind(self) -> int:
        return self.data[0]

    @property
    def reserved_zero(self) -> bool:
        return self.data[1:4] == b"\0\0\0"

    def u32(self, offset: int) -> int:
        return struct.unpack_from("<I", self.data, offset)[0]

    @property
    def counter(self) -> int:
        """The nonce counter of a transport message."""
        return struct.unpack_from("<Q", self.data, 8)[0]


def udp_datagrams(frames: Iterable[Packet]) -> list[WgDatagram]:
    """UDP datagrams over IPv4 in capture order; a frame seen on several bridge ports counts once.

    A GSO send (several equal datagrams to one address in one syscall) crosses the simulated
    underlay unsegmented, as one frame: tests that count or size datagrams send their packets
    apart in time.
    """
    seen: set[tuple[str, int, str, int, bytes]] = set()
    out = []
    for frame in frames:
        if not frame.haslayer(IP) or not frame.haslayer(UDP):
            continue
        ip, udp = frame[IP], frame[UDP]
        data = bytes(udp.payload)
        key = (ip.src, udp.sport, ip.dst, udp.dport, data)
        if key in seen:
            continue
        seen.add(key)
        out.append(WgDatagram(ip.src, udp.sport, ip.dst, udp.dport, udp.len - 8, data, float(frame.time)))
    return out


def padded_transport_size(inner_length: int) -> int:
    """A transport message carrying an inner packet of this length (below the MTU): header,
    the packet padded to a multiple of 16, and the tag."""
    return TRANSPORT_HEADER + -(-inner_length // 16) * 16 + TAG


# mac1 (whitepaper 5.4.4): MAC(HASH(LABEL_MAC1 || responder's public key), message up to mac1).

def mac1_key(public_key: bytes) -> bytes:
    return hashlib.blake2s(b"mac1----" + public_key).digest()


def cookie_key(public_key: bytes) -> bytes:
    return hashlib.blake2s(b"cookie--" + public_key).digest()


def mac1_of(message: bytes) -> bytes:
    return message[-2 * MAC_SIZE:-MAC_SIZE]


def mac1_valid(message: bytes, receiver_public: bytes) -> bool:
    expected = hashlib.blake2s(message[:-2 * MAC_SIZE], key=mac1_key(receiver_public), digest_size=MAC_SIZE).digest()
    return mac1_of(message) == expected


def mac2_valid(message: bytes, cookie: bytes) -> bool:
    """mac2 = MAC(cookie, message up to mac2) (whitepaper 5.4.7)."""
    expected = hashlib.blake2s(message[:-MAC_SIZE], key=cookie, digest_size=MAC_SIZE).digest()
    return message[-MAC_SIZE:] == expected


def spoofed_initiation(receiver_public: bytes, sender_index: int) -> bytes:
    """A handshake initiation with random ephemeral, static and timestamp fields but a valid
    mac1 for `receiver_public` (what a flooder who knows the public key can send), mac2 zero."""
    body = struct.pack("<II", INITIATION, sender_index) + os.urandom(32 + 48 + 28)
    mac1 = hashlib.blake2s(body, key=mac1_key(receiver_public), digest_size=MAC_SIZE).digest()
    return body + mac1 + bytes(MAC_SIZE)


def ipv4_udp(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """A whole IPv4/UDP packet (checksums filled in by scapy), ready for a raw socket."""
    return bytes(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(load=payload))


# Injection from inside a namespace.

def in_netns(netns: str, work: Callable[[], T]) -> T:
    """Run `work` in a fresh thread that has joined the network namespace `netns`."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
            result.append(work())
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=target, name=f"in-{netns}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def send_raw(netns: str, packets: Sequence[bytes], *, per_second: float | None = None) -> int:
    """Send whole IPv4 packets (any source address) from inside `netns`; returns how many left.

    With `per_second` the sends are paced evenly, so a flood stays bounded in rate and time.
    """
    def work() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
            start = time.monotonic()
            for n, packet in enumerate(packets):
                if per_second:
                    delay = start + n / per_second - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                sock.sendto(packet, (str(ipaddress.IPv4Address(packet[16:20])), 0))
            return len(packets)

    return in_netns(netns, work)
