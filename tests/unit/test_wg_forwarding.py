"""Datagrams that reach a process other than their session's (plane.py: GRO and steering)
are handed on, never looped, and within bounds."""

from __future__ import annotations

import multiprocessing
import types

from overlayd.wireguard import DropReason
from overlayd.wireguard.counters import CounterSpace
from overlayd.wireguard.links import LINK_DATAGRAMS, WorkerLink
from overlayd.wireguard.plane import FORWARD_LIMIT
from overlayd.wireguard.udp import UdpSocket
from overlayd.wireguard.worker import Worker
from tests.unit.test_wg_device import A_IP, B_ADDR, B_IP, ip4
from tests.unit.test_wg_engine import FakeTun
from tests.unit.test_wg_workers import SHARDS, World


def _datagrams(world: World, count: int, now: float) -> list[bytes]:
    return [bytes(world.b.send_packet(ip4(B_IP, A_IP, b"%d" % i), now)[0].data) for i in range(count)]


def test_each_process_forwards_at_most_its_limit_per_report() -> None:
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
