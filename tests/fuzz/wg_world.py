"""Real WireGuard devices with sessions, and genuine messages of every type to mutate.

A and B know each other and hold a session; `loaded` (a peer of A, always "under load")
answers initiations with cookie replies. Deterministic keys and RNG: seed fixed.
"""

from __future__ import annotations

import ipaddress
import random
import struct

from overlayd.wireguard import Datagram, Device, Output, PeerConfig, TunPacket, crypto
from overlayd.wireguard.ratelimit import LoadDetector

A_ADDR = ("198.18.0.11", 51820)
B_ADDR = ("198.18.0.12", 51820)
L_ADDR = ("198.18.0.13", 51820)
A_IP, B_IP, L_IP = "10.0.1.1", "10.0.2.1", "10.0.3.1"


def ip4(src: str, dst: str, payload: bytes) -> bytes:
    return struct.pack(
        ">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0,
        ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed,
    ) + payload


def _net(text: str) -> tuple[ipaddress.IPv4Network, ...]:
    return (ipaddress.ip_network(text),)


class WgWorld:
    def __init__(self, seed: int = 7) -> None:
        rng = random.Random(seed).randbytes
        self.a = Device(crypto.generate_private_key(rng), rng=rng)
        self.b = Device(crypto.generate_private_key(rng), rng=rng)
        self.loaded = Device(crypto.generate_private_key(rng), rng=rng, load=LoadDetector(threshold=0))
        self.a.set_peer(PeerConfig(self.b.public_key, None, B_ADDR, _net("10.0.2.0/24")), 0.0)
        self.a.set_peer(PeerConfig(self.loaded.public_key, None, L_ADDR, _net("10.0.3.0/24")), 0.0)
        self.b.set_peer(PeerConfig(self.a.public_key, None, A_ADDR, _net("10.0.1.0/24")), 0.0)
        self.loaded.set_peer(PeerConfig(self.a.public_key, None, A_ADDR, _net("10.0.1.0/24")), 0.0)
        self.now = 0.0
        self.sent: set[bytes] = set()  # every inner packet A or B was asked to send
        self.samples = self._handshake_and_samples()

    def send(self, device: Device, src: str, dst: str, payload: bytes) -> bytes:
        packet = ip4(src, dst, payload)
        self.sent.add(packet)
        (datagram,) = device.send_packet(packet, self.now)
        return bytes(datagram.data)

    def _handshake_and_samples(self) -> list[bytes]:
        initiation = self.send(self.a, A_IP, B_IP, b"first")
        (response,) = self.b.receive_datagram_untrusted(initiation, A_ADDR, self.now)
        response_data = bytes(response.data)
        (first,) = self.a.receive_datagram_untrusted(response_data, B_ADDR, self.now)
        delivered = self.b.receive_datagram_untrusted(bytes(first.data), A_ADDR, self.now)
        assert [type(o) for o in delivered] == [TunPacket], "fixture handshake failed"
        self.now = 1.0
        transport = self.send(self.a, A_IP, B_IP, b"second, never delivered")
        back = self.send(self.b, B_IP, A_IP, b"reply, never delivered")
        to_loaded = self.send(self.a, A_IP, L_IP, b"staged")
        (cookie,) = self.loaded.receive_datagram_untrusted(to_loaded, A_ADDR, self.now)
        return [initiation, response_data, bytes(first.data), transport, back, to_loaded, bytes(cookie.data)]

    def check_outputs(self, outputs: list[Output]) -> None:
        """A TUN packet must be one a device was really given to send: nothing forged gets through."""
        for out in outputs:
            if isinstance(out, TunPacket):
                assert out.data in self.sent, f"forged inner packet delivered: {out.data[:40]!r}"
            else:
                assert isinstance(out, Datagram), f"unexpected output {out!r}"
