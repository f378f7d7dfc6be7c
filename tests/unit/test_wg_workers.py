"""Worker processes of overlayd-wg, in pieces: the steering program (judged by the kernel's
reuseport group on loopback), leased send counters (across a real fork), and a WorkerPlane
fed by a sharded Device's snapshots, talking to a plain Device as the remote peer."""

from __future__ import annotations

import ipaddress
import os
import random
import signal
import socket
import threading
import time

import pytest

from overlayd.config import config_from_mapping
from overlayd.errors import ConfigError, KernelError
from overlayd.wireguard import Datagram, DatagramBatch, Device, DropReason, PeerConfig, TunPacket, crypto
from overlayd.wireguard import cli as wg_cli
from overlayd.wireguard import steering
from overlayd.wireguard.counters import LEASE, STALE, CounterSpace
from overlayd.wireguard.engine import Engine
from overlayd.wireguard.plane import WorkerPlane
from overlayd.wireguard.udp import UdpSocket, segments
from tests.unit.test_wg_device import A_ADDR, A_IP, A_NET, B_ADDR, B_IP, B_NET, ip4
from tests.unit.test_wg_engine import FakeTun

SHARDS = 2


# Steering.

def test_the_kernel_steers_as_worker_for_says() -> None:
    group = [UdpSocket(0, reuseport=True)]
    group += [UdpSocket(group[0].port, reuseport=True) for _ in range(2)]
    steering.attach(group[0].sock, 3)
    rng = random.Random(7)
    sent = []
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as tx:
        for i in range(300):
            datagram = rng.randbytes(rng.choice((3, 31, 32, 60, 148)))
            if i % 2:
                datagram = b"\x04\0\0\0" + datagram[4:]
            sent.append(datagram)
            tx.sendto(datagram, ("::1", group[0].port))
    time.sleep(0.2)
    got: dict[bytes, int] = {}
    for position, udp in enumerate(group):
        buf = bytearray(256)
        while True:
            try:
                n, _, _ = udp.recv_into(buf)
            except BlockingIOError:
                break
            got[bytes(buf[:n])] = position
    for udp in group:
        udp.close()
    assert len(got) == len(set(sent))
    assert all(got[d] == steering.worker_for(d, 3) for d in sent)
    assert {steering.worker_for(d, 3) for d in sent} == {0, 1, 2}


def test_only_transport_messages_leave_the_control_process() -> None:
    index_on_1 = (0x101).to_bytes(4, "little")
    assert steering.worker_for(b"\x04\0\0\0" + index_on_1 + bytes(24), 2) == 1
    assert steering.worker_for(b"\x04\0\0\0" + index_on_1 + bytes(23), 2) == 0  # short
    assert steering.worker_for(b"\x01\0\0\0" + index_on_1 + bytes(140), 2) == 0  # initiation
    assert steering.worker_for(b"\x03\0\0\0" + index_on_1 + bytes(56), 2) == 0  # cookie reply


# Leased counters.

class Lease:
    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.send_counter = 0
        self.lease_end = 0


def take(space: CounterSpace, holder: Lease, count: int) -> list[int]:
    assert space.reserve(holder, count)
    taken = list(range(holder.send_counter, holder.send_counter + count))
    holder.send_counter += count
    return taken


def test_no_counter_is_handed_out_twice_across_processes() -> None:
    space = CounterSpace(4)
    slot = space.new_slot()
    assert slot is not None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a worker sealing batches of 1..64
        rng = random.Random(1)
        mine = Lease(slot)
        used = [c for _ in range(300) for c in take(space, mine, rng.randint(1, 64))]
        os.write(write, ",".join(map(str, used)).encode())
        os._exit(0)
    os.close(write)
    rng = random.Random(2)
    ours = Lease(slot)
    used = [c for _ in range(300) for c in take(space, ours, rng.randint(1, 64))]
    chunks = []
    while chunk := os.read(read, 1 << 20):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    theirs = [int(c) for c in b"".join(chunks).decode().split(",")]
    assert len(theirs) > 300
    assert not set(used) & set(theirs)


def test_a_quiet_holder_renews_a_lease_the_others_left_behind() -> None:
    space = CounterSpace(2)
    slot = space.new_slot()
    assert slot is not None
    quiet, busy = Lease(slot), Lease(slot)
    first = take(space, quiet, 1)[0]
    for _ in range(STALE // LEASE + 2):
        take(space, busy, LEASE)
    # The quiet holder still has most of its lease, but the peer has moved on past it.
    renewed = take(space, quiet, 1)[0]
    assert renewed == space.value(slot) - LEASE and renewed > first + STALE


def test_a_reused_slot_never_goes_back() -> None:
    space = CounterSpace(1)
    slot = space.new_slot()
    assert slot is not None and space.new_slot() is None
    old = Lease(slot)
    used = take(space, old, 10)
    space.free_slot(slot)
    assert space.new_slot() == slot
    new = Lease(slot)
    assert take(space, new, 1)[0] > max(used)
    assert take(space, old, LEASE)[0] > max(used)  # a stale holder of the old key moves on too


# A WorkerPlane beside a sharded Device.

class World:
    """Device A (2 shards: itself, and a WorkerPlane as shard 1) and a plain Device B on `shard`
    of A (a new peer goes to the process with the fewest, workers first: for shard 0, another
    peer comes first)."""

    def __init__(self, shard: int) -> None:
        rng = random.Random(3).randbytes
        self.counters = CounterSpace(16)
        self.a = Device(crypto.generate_private_key(rng), rng=rng, shards=SHARDS, counters=self.counters)
        self.b = Device(crypto.generate_private_key(rng), rng=rng)
        self.plane = WorkerPlane(1, SHARDS, self.counters)
        assert self.a.public_key is not None and self.b.public_key is not None
        if shard == 0:
            other = crypto.public_key(crypto.private_key_object(crypto.generate_private_key(rng)))
            self.a.set_peer(PeerConfig(other, allowed_ips=(ipaddress.ip_network("10.0.9.0/24"),)), 0.0)
        self.a.set_peer(PeerConfig(self.b.public_key, endpoint=B_ADDR, allowed_ips=(ipaddress.ip_network(B_NET),)), 0.0)
        self.b.set_peer(PeerConfig(self.a.public_key, endpoint=A_ADDR, allowed_ips=(ipaddress.ip_network(A_NET),)), 0.0)

    def to_b(self, datagrams: list, now: float) -> list[bytes]:
        """Deliver to B; B's answers go back to A's device. Returns what B's TUN got."""
        delivered = []
        for d in datagrams:
            for data in ([bytes(x) for x in segments(d.data, d.size)] if isinstance(d, DatagramBatch) else [bytes(d.data)]):
                for out in self.b.receive_datagram_untrusted(data, A_ADDR, now):
                    if isinstance(out, TunPacket):
                        delivered.append(out.data)
                    else:
                        self.to_a(bytes(out.data), now)
        return delivered

    def to_a(self, data: bytes, now: float) -> list[bytes]:
        """Deliver a datagram from B to whichever process of A steering picks."""
        if steering.worker_for(data, SHARDS) == 1:
            outputs = self.plane.receive_datagrams_untrusted([(data, B_ADDR)], now)
        else:
            outputs = self.a.receive_datagram_untrusted(data, B_ADDR, now)
        self.to_b([o for o in outputs if isinstance(o, Datagram)], now)
        return [o.data for o in outputs if isinstance(o, TunPacket)]

    def publish(self, now: float) -> None:
        """What the engine does after a change: the peers that changed, to the worker."""
        self.plane.apply(self.a.plane_update(), now)

    def connect(self) -> None:
        """B starts a handshake; A's workers hear of the session; B confirms it with data."""
        initiation = self.b.send_packet(ip4(B_IP, A_IP, b"hello"), 0.0)
        self.to_a(bytes(initiation[0].data), 0.0)
        self.publish(0.0)


@pytest.mark.parametrize("shard", [0, 1])
def test_a_datagram_that_reaches_another_process_is_opened_by_its_own(shard: int) -> None:
    """GRO can take a session's datagrams to another process (plane.py): that one hands them
    on, and only the owner's replay window judges them."""
    world = World(shard)
    world.connect()
    packet = ip4(B_IP, A_IP, b"data")
    datagram = bytes(world.b.send_packet(packet, 1.0)[0].data)
    index = int.from_bytes(datagram[4:8], "little")
    assert steering.worker_for(datagram, SHARDS) == shard == (index & 0xFF) % SHARDS
    if shard == 0:  # it reached the worker: to the control in the report
        assert world.plane.receive_datagrams_untrusted([(datagram, B_ADDR)], 1.0) == []
        report = world.plane.take_report()
        assert report is not None and report.forwarded == [(datagram, B_ADDR)]
        outputs = world.a.apply_report(report, 1.0)
    else:  # it reached the control: to the worker that owns it
        assert world.a.receive_datagram_untrusted(datagram, B_ADDR, 1.0) == []
        forwarded = world.a.take_forwarded()
        assert forwarded == {1: [(datagram, B_ADDR)]} and world.a.take_forwarded() == {}
        outputs = world.plane.receive_datagrams_untrusted(forwarded[1], 1.0, forward=False)
    assert [o.data for o in outputs if isinstance(o, TunPacket)] == [packet]
    assert world.to_a(datagram, 1.1) == []  # the same datagram again, steered right: a replay
    assert not world.a.drops[DropReason.MISROUTED] and not world.plane.drops[DropReason.MISROUTED]


def test_the_worker_opens_seals_and_reports() -> None:
    world = World(1)
    world.connect()
    packets = [ip4(B_IP, A_IP, b"x%d" % i) for i in range(5)]
    received = []
    for p in packets:
        received += world.to_a(bytes(world.b.send_packet(p, 1.0)[0].data), 1.0)
    assert received == packets
    # A replay of the same datagram is refused by the worker's window, after a new snapshot too.
    again = bytes(world.b.send_packet(packets[0], 1.5)[0].data)
    assert world.to_a(again, 1.5) == [packets[0]]
    world.a.update_peer(world.b.public_key, 1.5, persistent_keepalive=0)  # any change: a new snapshot
    world.publish(1.5)
    assert world.to_a(again, 1.6) == []
    assert world.plane.drops[DropReason.REPLAY] == 1
    # Its report is the device's bookkeeping: bytes, and the responder's key confirmed, which
    # makes it the key to send with.
    report = world.plane.take_report()
    assert report is not None and world.plane.take_report() is None
    world.a.apply_report(report, 2.0)
    assert world.a.peer_status(world.b.public_key).rx_bytes > 0
    world.publish(2.0)
    sealed = world.plane.seal_packets([ip4(A_IP, B_IP, b"back")], 2.0)
    assert world.to_b(sealed, 2.0) == [ip4(A_IP, B_IP, b"back")]
    report = world.plane.take_report()
    assert report is not None and report.sent
    world.a.apply_report(report, 2.0)
    assert world.a.peer_status(world.b.public_key).tx_bytes > 0


def test_a_datagram_that_beats_its_snapshot_waits_for_it() -> None:
    world = World(1)
    initiation = world.b.send_packet(ip4(B_IP, A_IP, b"early"), 0.0)
    world.to_a(bytes(initiation[0].data), 0.0)  # B now has the session; A's worker has not heard
    early = bytes(world.b.send_packet(ip4(B_IP, A_IP, b"second"), 0.1)[0].data)
    assert world.plane.receive_datagrams_untrusted([(early, B_ADDR)], 0.1) == []
    outputs = world.plane.apply(world.a.plane_snapshot(), 0.2)
    # The first data (sent as B confirmed the session) and the next, both held, in order.
    assert [o.data for o in outputs if isinstance(o, TunPacket)] == [ip4(B_IP, A_IP, b"early"),
                                                                     ip4(B_IP, A_IP, b"second")]


def test_device_and_worker_sealing_with_one_key_interleave_inside_the_replay_window() -> None:
    world = World(0)
    world.connect()
    world.to_a(bytes(world.b.send_packet(ip4(B_IP, A_IP, b"confirm"), 0.5)[0].data), 0.5)
    world.publish(0.5)
    rng = random.Random(5)
    expected, batches = [], []
    for i in range(200):  # the two processes take turns at random, in bursts of 1..64
        burst = [ip4(A_IP, B_IP, b"%d-%d" % (i, j)) for j in range(rng.randint(1, 64))]
        sealer = world.plane if rng.random() < 0.5 else world.a
        batches.append(sealer.seal_packets(burst, 1.0))
        expected += burst
    rng.shuffle(batches)  # and their sends race: whole batches arrive out of order
    delivered = [p for batch in batches for p in world.to_b(batch, 1.0)]
    assert sorted(delivered) == sorted(expected)
    assert not world.b.drops


def test_a_keypair_without_a_slot_stays_with_the_device() -> None:
    world = World(1)
    while world.counters.new_slot() is not None:  # all slots taken: workers cannot seal with the key
        pass
    world.connect()
    world.to_a(bytes(world.b.send_packet(ip4(B_IP, A_IP, b"confirm"), 0.5)[0].data), 0.5)
    world.publish(0.5)
    assert world.plane.seal_packets([ip4(A_IP, B_IP, b"out")], 1.0) == []
    report = world.plane.take_report()
    assert report is not None and report.packets == [ip4(A_IP, B_IP, b"out")]
    sent = world.a.apply_report(report, 1.0)  # the device seals what the worker handed over
    assert world.to_b(sent, 1.0) == [ip4(A_IP, B_IP, b"out")]


# The command line.

@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers must be 1..64"),
    (["--workers", "65"], "--workers must be 1..64"),
    (["--busy-poll-us", "-1"], "--busy-poll-us must be 0..100000"),
])
def test_out_of_range_options_get_one_line(args: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert wg_cli.main([*args, "wgtest0"]) == wg_cli.EXIT_USAGE
    assert capsys.readouterr().err == f"overlayd-wg: {message}\n"


@pytest.mark.parametrize("value", [0, 65, "2", True])
def test_the_daemon_refuses_a_bad_worker_count(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^wireguard.workers .*: a whole number 1..64$"):
        config_from_mapping({"node_name": "n1", "wireguard": {"workers": value}})


def test_the_daemon_reads_a_worker_count() -> None:
    assert config_from_mapping({"node_name": "n1", "wireguard": {"workers": 2}}).wireguard.workers == 2


def test_peers_spread_evenly_over_the_processes() -> None:
    rng = random.Random(4).randbytes
    device = Device(crypto.generate_private_key(rng), rng=rng, shards=4, counters=CounterSpace(4))
    keys = [crypto.public_key(crypto.private_key_object(crypto.generate_private_key(rng))) for _ in range(9)]
    for key in keys:
        device.set_peer(PeerConfig(key), 0.0)
    device.remove_peer(keys[0])  # worker 1 had three: now two, as many as the others
    device.set_peer(PeerConfig(keys[0]), 0.0)  # so the next peer goes to the first worker again
    shards = [device.shard_of(key) for key in keys]
    assert shards == [1, 2, 3, 0, 1, 2, 3, 0, 1]  # workers first, then the control, in turn


def test_a_holder_killed_inside_a_lease_does_not_hang_the_others() -> None:
    # A semaphore stays taken when its holder dies: every process would hang on its next lease.
    space = CounterSpace(1)
    slot = space.new_slot()
    assert slot is not None
    for attempt in range(10):
        pid = os.fork()
        if pid == 0:  # leases as fast as it can, so the kill often lands while it holds the lock
            holder = Lease(slot)
            while True:
                space.lease(holder, 1)
        time.sleep(0.02 + attempt * 0.003)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        done = threading.Event()
        threading.Thread(target=lambda: (space.lease(Lease(slot), 1), done.set()), daemon=True).start()
        assert done.wait(2), "a lease hung after its holder was killed"


def test_a_reported_exchange_arms_the_timers_a_single_process_would() -> None:
    # A pings B through its worker: request sent, reply received, in one report. One process
    # would then owe B a keepalive, not a new handshake 15 s later (the reply answered).
    world = World(1)
    world.connect()
    world.to_a(bytes(world.b.send_packet(ip4(B_IP, A_IP, b"confirm"), 0.5)[0].data), 0.5)
    report = world.plane.take_report()
    assert report is not None
    world.a.apply_report(report, 0.5)
    world.publish(0.5)
    assert world.to_b(world.plane.seal_packets([ip4(A_IP, B_IP, b"request")], 1.0), 1.0)
    world.to_a(bytes(world.b.send_packet(ip4(B_IP, A_IP, b"reply"), 1.001)[0].data), 1.001)
    report = world.plane.take_report()
    assert report is not None and report.received and report.sent
    world.a.apply_report(report, 1.05)
    deadline = world.a.get_timer()
    assert deadline is not None
    world.a.handle_timer(deadline)
    assert [d.data[0] for d in world.a.datagrams_to_send(deadline)] == [4]  # a keepalive


def test_a_port_another_group_holds_is_refused_not_shared() -> None:
    # Another interface with workers on the port: SO_REUSEPORT alone would join its group and
    # take a share of its datagrams. One line, as with a single process.
    other = [UdpSocket(0, reuseport=True)]
    other.append(UdpSocket(other[0].port, reuseport=True))
    try:
        with pytest.raises(KernelError, match=f"cannot open UDP port {other[0].port}"):
            Engine(FakeTun(), worker_queues=[FakeTun()], listen_port=other[0].port)  # type: ignore[arg-type]
    finally:
        for udp in other:
            udp.close()


def test_a_worker_answers_a_roamed_peer_at_its_new_address_at_once() -> None:
    """Not only once the control has heard of it in a report and sent a snapshot back."""
    world = World(1)
    world.connect()
    report = world.plane.take_report()  # B's first data confirmed the session: the worker may send
    assert report is not None
    world.a.apply_report(report, 0.5)
    world.publish(0.5)
    roamed = ("::ffff:198.51.100.7", 40000, 0, 0)
    datagram = bytes(world.b.send_packet(ip4(B_IP, A_IP, b"from afar"), 1.0)[0].data)
    assert world.plane.receive_datagrams_untrusted([(datagram, roamed)], 1.0)
    answer = world.plane.seal_packets([ip4(A_IP, B_IP, b"answer")], 1.0)
    assert [d.addr for d in answer] == [roamed]
