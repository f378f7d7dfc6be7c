"""Datagrams that reach a process other than their session's (plane.py: GRO and steering)
are handed on if they come from the peer's own address, never looped, within bounds, and
being late they move no endpoint."""

from __future__ import annotations

import multiprocessing
import types

from overlayd.wireguard import Datagram, DropReason, TunPacket
from overlayd.wireguard.counters import CounterSpace
from overlayd.wireguard.links import LINK_DATAGRAMS, WorkerLink
from overlayd.wireguard.plane import FORWARD_INTERVAL, FORWARD_LIMIT
from overlayd.wireguard.udp import UdpSocket
from overlayd.wireguard.worker import Worker
from tests.unit.test_wg_device import A_ADDR, A_IP, B_ADDR, B_IP, ip4
from tests.unit.test_wg_engine import FakeTun
from tests.unit.test_wg_workers import SHARDS, World


def _datagrams(world: World, count: int, now: float) -> list[bytes]:
    return [bytes(world.b.send_packet(ip4(B_IP, A_IP, b"%d" % i), now)[0].data) for i in range(count)]


def test_each_process_passes_on_at_most_its_budget_per_interval() -> None:
    to_control = World(0)  # B's sessions are the control's: the worker forwards them
    to_control.connect()
    foreign = [(d, B_ADDR) for d in _datagrams(to_control, FORWARD_LIMIT + 3, 1.0)]
    to_control.plane.receive_datagrams_untrusted(foreign, 1.0)
    report = to_control.plane.take_report()
    assert report is not None and report.forwarded == foreign[:FORWARD_LIMIT]
    assert report.drops[DropReason.MISROUTED] == 3

    to_worker = World(1)
    to_worker.connect()
    foreign = [(d, B_ADDR) for d in _datagrams(to_worker, FORWARD_LIMIT + 3, 1.0)]
    to_worker.a.receive_datagrams_untrusted(foreign, 1.0)
    assert to_worker.a.take_forwarded() == {1: foreign[:FORWARD_LIMIT]}
    assert to_worker.a.drops[DropReason.MISROUTED] == 3
    later = [(d, B_ADDR) for d in _datagrams(to_worker, 2, 1.0 + FORWARD_INTERVAL)]
    to_worker.a.receive_datagrams_untrusted(later, 1.0 + FORWARD_INTERVAL)  # a new interval
    assert to_worker.a.take_forwarded() == {1: later}


def test_only_datagrams_from_the_peers_own_address_are_passed_on() -> None:
    """Anyone can make GRO bring a batch of junk to a process; only a spoofer of the peer's
    address can bring the peer's datagrams, so nothing else is worth a hop."""
    elsewhere = ("198.51.100.99", 40000)
    to_control = World(0)
    to_control.connect()
    datagram = _datagrams(to_control, 1, 1.0)[0]
    to_control.plane.receive_datagrams_untrusted([(datagram, elsewhere), (b"\x01" + bytes(40), B_ADDR)], 1.0)
    report = to_control.plane.take_report()
    assert report is not None and report.forwarded == [] and report.drops[DropReason.MISROUTED] == 2

    to_worker = World(1)
    to_worker.connect()
    datagram = _datagrams(to_worker, 1, 1.0)[0]
    to_worker.a.receive_datagrams_untrusted([(datagram, elsewhere)], 1.0)
    assert to_worker.a.take_forwarded() == {} and to_worker.a.drops[DropReason.MISROUTED] == 1


def test_a_forwarded_datagram_does_not_move_the_endpoint_back() -> None:
    """B roamed; its older datagram, forwarded by the worker, arrives after the news."""
    world = World(0)  # B's sessions are the control's
    world.connect()
    old = _datagrams(world, 1, 1.0)[0]
    world.plane.receive_datagrams_untrusted([(old, B_ADDR)], 1.0)  # GRO took it to the worker
    report = world.plane.take_report()
    assert report is not None and report.forwarded == [(old, B_ADDR)]
    roamed = ("198.51.100.7", 40000)
    new = _datagrams(world, 1, 1.01)[0]
    world.a.receive_datagram_untrusted(new, roamed, 1.01)  # straight to the control, from B's new address
    assert world.a.peer_status(world.b.public_key).endpoint == roamed
    outputs = world.a.apply_report(report, 1.02)
    assert [o.data for o in outputs if isinstance(o, TunPacket)] == [ip4(B_IP, A_IP, b"0")]  # still delivered
    assert world.a.peer_status(world.b.public_key).endpoint == roamed


def test_a_forwarded_datagram_is_never_forwarded_again() -> None:
    world = World(0)
    world.connect()
    datagram = _datagrams(world, 1, 1.0)[0]
    assert world.plane.receive_datagrams_untrusted([(datagram, B_ADDR)], 1.0, forward=False) == []
    report = world.plane.take_report()
    assert report is not None and report.forwarded == [] and report.drops[DropReason.MISROUTED] == 1


def test_the_control_hands_a_workers_datagrams_over_its_link() -> None:
    """Through the real pipe and the worker's own message loop, to its TUN queue."""
    world = World(1)
    world.connect()
    packet = ip4(B_IP, A_IP, b"via the control")
    datagram = bytes(world.b.send_packet(packet, 1.0)[0].data)
    world.a.receive_datagram_untrusted(datagram, B_ADDR, 1.0)
    forwarded = world.a.take_forwarded()[1]
    control_end, worker_end = multiprocessing.Pipe()
    process = types.SimpleNamespace(name="worker 1", pid=0, join=lambda timeout=None: None, is_alive=lambda: False)
    link = WorkerLink(process, control_end)  # type: ignore[arg-type]
    tun, udp = FakeTun(), UdpSocket(0)
    worker = Worker(1, SHARDS, tun, udp, worker_end, CounterSpace(1), 0.0)  # type: ignore[arg-type]
    worker._plane = world.plane  # the plane that holds B's session
    worker._clock = lambda: 1.0  # the world's time
    try:
        assert link.post_datagrams(forwarded) == 0
        link.start()
        assert worker_end.poll(5)
        worker._from_control()
        assert tun.written == [packet]
        # A worker that does not read: what waits for it is bounded.
        assert link.post_datagrams(forwarded * (LINK_DATAGRAMS + 5)) in (5, 6)
    finally:
        link.close(5.0)
        udp.close()
        tun.close()
        worker_end.close()


def test_a_datagram_held_for_its_session_moves_no_endpoint() -> None:
    """Opened late, when the snapshot with its session comes: only datagrams opened as they
    arrive move an endpoint (the rule for forwarded ones too)."""
    world = World(1)  # B's sessions are the worker's
    initiation = world.b.send_packet(ip4(B_IP, A_IP, b"hello"), 0.0)
    response = [o for o in world.a.receive_datagram_untrusted(bytes(initiation[0].data), B_ADDR, 0.0)
                if isinstance(o, Datagram)]
    hello = [o for o in world.b.receive_datagram_untrusted(bytes(response[0].data), A_ADDR, 0.0)
             if isinstance(o, Datagram)]
    elsewhere = ("198.51.100.50", 40000)
    assert world.plane.receive_datagrams_untrusted([(bytes(hello[0].data), elsewhere)], 0.0) == []  # held
    world.publish(0.1)  # brings the session: the held datagram is opened now
    report = world.plane.take_report()
    assert report is not None and [entry[2] for entry in report.received.values()] == [None]
    world.a.apply_report(report, 0.1)
    assert world.a.peer_status(world.b.public_key).endpoint == B_ADDR
