"""The I/O shell (engine.py) on a real UDP socket on localhost and a fake TUN device, against
a core Device as the peer. No root needed: no TUN, no namespaces."""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from overlayd.wireguard import Device, PeerConfig, crypto
from overlayd.wireguard.engine import Engine
from overlayd.wireguard.uapi import PeerUpdate, SetRequest, parse_set_untrusted
from tests.unit.test_wg_device import ip4

LOCALHOST = "127.0.0.1"


class FakeTun:
    """What the engine uses of a TunDevice: an fd that polls and reads (nothing comes), writes kept."""

    offload = False
    mtu = 1420
    name = "fake0"

    def __init__(self) -> None:
        self._ours, self._theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._ours.setblocking(False)
        self.fd = self._ours.fileno()
        self.written: list[bytes] = []

    def write(self, iovec: Sequence[bytes | bytearray | memoryview]) -> bool:
        self.written.append(b"".join(iovec))
        return True

    def close(self) -> None:
        self._ours.close()
        self._theirs.close()


class Clock:
    """A scripted clock the engine's threads read; `step` seconds pass on every read until frozen."""

    def __init__(self, step: float = 0.0) -> None:
        self.now = 1000.0
        self.step = step
        self.reads = 0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.reads += 1
            self.now += self.step
            return self.now

    def freeze(self) -> None:
        with self._lock:
            self.step = 0.0


def keypair() -> tuple[bytes, bytes]:
    private = crypto.generate_private_key(os.urandom)
    return private, crypto.public_key(crypto.private_key_object(private))


@pytest.fixture
def peer_socket() -> Iterator[socket.socket]:
    """The remote peer's UDP socket on localhost."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCALHOST, 0))
    sock.settimeout(0.2)
    with sock:
        yield sock


def make_engine(clock: Clock | None = None) -> tuple[Engine, FakeTun]:
    tun = FakeTun()
    return Engine(tun, clock=clock or time.monotonic), tun  # type: ignore[arg-type]


def received(sock: socket.socket, seconds: float) -> list[bytes]:
    """Everything that arrives on `sock` within `seconds`."""
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            out.append(sock.recv(65536))
        except TimeoutError:
            pass
    return out


def test_a_batch_of_tiny_datagrams_does_not_make_the_engine_demand_cookies(peer_socket: socket.socket) -> None:
    # Finding 3: 17 one-byte datagrams in one receive batch switched on "under load", so a real
    # initiation got a cookie reply instead of a response.
    engine, tun = make_engine()
    b_private, b_public = keypair()
    a = Device(crypto.generate_private_key(os.urandom), rng=os.urandom)
    engine.apply(SetRequest(private_key=b_private, peers=(PeerUpdate(
        a.public_key, endpoint=(ipaddress.ip_address(LOCALHOST), peer_socket.getsockname()[1]),
        allowed_ips=(ipaddress.ip_network("10.0.1.0/24"),)),)))
    engine_addr = (LOCALHOST, engine.get_state().listen_port)
    a.set_peer(PeerConfig(b_public, endpoint=engine_addr, allowed_ips=(ipaddress.ip_network("10.0.2.0/24"),)), 0.0)
    initiation = a.send_packet(ip4("10.0.1.1", "10.0.2.1"), 0.0)  # a packet for B starts a handshake
    for _ in range(17):  # queued before the engine runs: one batch with the initiation
        peer_socket.sendto(b"\x01", engine_addr)
    peer_socket.sendto(b"", engine_addr)  # an empty one too: dropped and counted, like the rest
    peer_socket.sendto(bytes(initiation[0].data), engine_addr)
    engine.start()
    try:
        answers = received(peer_socket, 1.0)
    finally:
        engine.stop()
        tun.close()
    assert [m[0] for m in answers] == [2], "expected one handshake response, no cookie reply"
    assert engine.counters()["drop_short"] == 18


def test_no_initiations_pile_up_while_there_is_no_private_key(peer_socket: socket.socket) -> None:
    # Finding 4: with peers but no key, the timers queued an initiation every few seconds
    # (3,127 after six hours) and all of them went out when the key arrived.
    clock = Clock(step=1800.0)  # every read of the clock moves time on: hours pass in a second
    engine, tun = make_engine(clock)
    b_private, _ = keypair()
    _, a_public = keypair()
    engine.apply(SetRequest(peers=(PeerUpdate(
        a_public, endpoint=(ipaddress.ip_address(LOCALHOST), peer_socket.getsockname()[1]),
        persistent_keepalive=25, allowed_ips=(ipaddress.ip_network("10.0.1.0/24"),)),)))
    engine.start()
    try:
        start = clock.now
        time.sleep(1.0)
        deadline = time.monotonic() + 30
        while clock.now - start < 6 * 3600 and time.monotonic() < deadline:
            time.sleep(0.05)
        clock.freeze()
        assert clock.now - start >= 6 * 3600
        assert received(peer_socket, 0.3) == []  # nothing is sent without a key
        engine.apply(SetRequest(private_key=b_private))
        sent = received(peer_socket, 1.0)
    finally:
        engine.stop()
        tun.close()
    assert [(m[0], len(m)) for m in sent] == [(1, 148)], "one initiation once the key is there"


def test_many_sections_for_one_peer_apply_in_linear_time() -> None:
    # Finding 6: 2,000 sections for one peer in one set took 33 s under the device lock.
    engine, tun = make_engine()
    try:
        _, a_public = keypair()
        body = "".join(f"public_key={a_public.hex()}\nallowed_ip=10.{i >> 8}.{i & 255}.0/24\n" for i in range(2000))
        request = parse_set_untrusted(body + "\n")
        start = time.perf_counter()
        engine.apply(request)
        elapsed = time.perf_counter() - start
        assert len(engine.get_state().peers[0].allowed_ips) == 2000
    finally:
        engine.stop()
        tun.close()
    assert elapsed < 1.0, f"{elapsed:.2f} s for 2,000 sections"


def test_a_lone_datagram_after_a_quiet_spell_costs_one_receive(peer_socket: socket.socket) -> None:
    """Not a second one that fails: on a cold CPU that is a good part of a round trip."""
    engine, tun = make_engine()
    udp = engine._path.udp
    receive = udp.recv_into
    calls: list[str] = []

    def counted(buffer: bytearray) -> tuple[int, int, object]:
        try:
            result = receive(buffer)
        except BlockingIOError:
            calls.append("empty")
            raise
        calls.append("datagram")
        return result

    udp.recv_into = counted  # type: ignore[method-assign]
    engine_addr = (LOCALHOST, engine.get_state().listen_port)
    engine.start()
    try:
        time.sleep(0.3)  # quiet
        calls.clear()
        peer_socket.sendto(b"\x01", engine_addr)  # too short: dropped and counted
        deadline = time.monotonic() + 5
        while engine.counters().get("drop_short", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
    finally:
        engine.stop()
        tun.close()
    assert calls == ["datagram"]
