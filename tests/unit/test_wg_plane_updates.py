"""Snapshots to the workers carry only the peers that changed: a worker fed those updates (each
one, or several merged while it lagged) must hold what a worker fed whole snapshots holds."""

from __future__ import annotations

import ipaddress
import multiprocessing
import random
import types
from typing import Any

from overlayd.wireguard import Datagram, PeerConfig, crypto, steering
from overlayd.wireguard.counters import CounterSpace
from overlayd.wireguard.links import WorkerLink
from overlayd.wireguard.plane import PeerPlane, PlaneSnapshot, SessionKeys, WorkerPlane, merge
from overlayd.wireguard.udp import UdpSocket
from overlayd.wireguard.worker import Worker
from tests.unit.test_wg_device import A_IP, B_ADDR, B_IP, B_NET, ip4
from tests.unit.test_wg_engine import FakeTun
from tests.unit.test_wg_workers import SHARDS, World


B_ROAMED = ("::ffff:198.51.100.7", 40000, 0, 0)


def _plane(key: bytes, *, endpoint: Any = None) -> PeerPlane:
    return PeerPlane(key, endpoint, (), ())


def test_merge_keeps_the_newest_of_each_peer_and_every_removal() -> None:
    full = PlaneSnapshot(1, 1420, (_plane(b"a"), _plane(b"b")))
    one = PlaneSnapshot(2, 1420, (_plane(b"b", endpoint="x"), _plane(b"c")), removed=(b"a",), full=False)
    assert merge(full, one) == PlaneSnapshot(2, 1420, (_plane(b"b", endpoint="x"), _plane(b"c")))
    two = PlaneSnapshot(3, 1280, (_plane(b"a"),), removed=(b"c",), full=False)
    merged = merge(one, two)
    assert not merged.full and merged.generation == 3 and merged.mtu == 1280
    assert {p.public_key: p for p in merged.peers} == {b"b": _plane(b"b", endpoint="x"), b"a": _plane(b"a")}
    assert set(merged.removed) == {b"c"}  # a, removed then back, comes with its new sessions
    assert merge(one, full) is full


def _view(plane: WorkerPlane) -> tuple[Any, ...]:
    """What a worker acts on: sessions by index (with their peer), and each peer's endpoint,
    allowed IPs and sending session."""
    sessions = {index: (k.peer.public_key, k.remote_index, k.created, k.slot, k.send_key)
                for index, k in plane._keypairs.items()}
    peers = {key: (p.endpoint, tuple(plane._routes.networks_of(p)), p.sender and p.sender.local_index)
             for key, p in plane._peers.items()}
    return plane.mtu, plane.generation, sessions, peers


def _new_key(rng: random.Random) -> bytes:
    return crypto.public_key(crypto.private_key_object(crypto.generate_private_key(rng.randbytes)))


def test_updates_merged_or_not_give_the_worker_what_a_whole_snapshot_gives() -> None:
    world = World(1)
    device = world.a
    updated = world.plane  # World.publish applies each update
    lagging = WorkerPlane(1, SHARDS, world.counters)
    held: PlaneSnapshot | None = None
    rng = random.Random(11)
    others: list[bytes] = []
    pool = [ipaddress.ip_network(f"10.200.{i}.0/24") for i in range(6)]  # few: they move between peers
    b_config = PeerConfig(world.b.public_key, endpoint=B_ADDR, allowed_ips=(ipaddress.ip_network(B_NET),))
    sessions_seen: set[int] = set()
    most_peers = 0
    now = 0.0
    world.connect()
    lagging.apply(device.plane_snapshot(), now)
    device.plane_update()
    for step in range(400):
        now += rng.choice((0.5, 5.0, 40.0))
        action = rng.randrange(9)
        if action == 0 or not others:  # a new peer
            others.append(_new_key(rng))
            device.set_peer(PeerConfig(others[-1], allowed_ips=(rng.choice(pool),)), now)
        elif action == 1:  # a peer goes
            device.remove_peer(others.pop(rng.randrange(len(others))))
        elif action == 2:  # allowed IPs change, perhaps taken from another peer (or B)
            b = [world.b.public_key] if device.has_peer(world.b.public_key) else []
            device.update_peer(rng.choice(others + b), now, allowed_ips=(rng.choice(pool),),
                               replace_allowed_ips=rng.random() < 0.5)
        elif action == 3:  # a configured endpoint
            device.update_peer(rng.choice(others), now, endpoint=(f"::ffff:198.18.0.{step % 200 + 1}", 51820, 0, 0))
        elif action == 4:  # quiet for 10 minutes: A's sessions expire and are zeroed
            now += 600.0
            device.handle_timer(now)
        elif action == 5:  # B goes, with its sessions, or comes back
            if device.has_peer(world.b.public_key):
                device.remove_peer(world.b.public_key)
            else:
                device.set_peer(b_config, now)
        else:  # traffic from B, from one of two addresses: handshakes, rekeys, confirmation, roaming
            source = B_ADDR if rng.random() < 0.7 else B_ROAMED
            for sent in world.b.send_packet(ip4(B_IP, A_IP, b"%d" % step), now):  # none while B waits
                data = bytes(sent.data)
                if steering.worker_for(data, SHARDS) == 1:
                    world.plane.receive_datagrams_untrusted([(data, source)], now)
                else:
                    for out in device.receive_datagram_untrusted(data, source, now):
                        if isinstance(out, Datagram):
                            world.to_b([out], now)
            report = world.plane.take_report()
            if report is not None:
                device.apply_report(report, now)
            device.handle_timer(now)
        update = device.plane_update()
        updated.apply(update, now)
        whole = WorkerPlane(1, SHARDS, world.counters)  # fresh: nothing left from earlier steps
        whole.apply(device.plane_snapshot(), now)
        assert _view(updated) == _view(whole), step
        held = update if held is None else merge(held, update)
        if rng.random() < 0.3:  # a worker that read several updates at once
            lagging.apply(held, now)
            held = None
            assert _view(lagging) == _view(whole), step
        sessions_seen |= _view(whole)[2].keys()
        most_peers = max(most_peers, len(_view(whole)[3]))
    assert len(sessions_seen) >= 3 and most_peers > 5  # rekeys and peers were there


def test_a_network_taken_from_a_peer_leaves_it_on_a_worker_that_lagged() -> None:
    world = World(1)
    x, y = _new_key(random.Random(1)), _new_key(random.Random(2))
    taken, other = ipaddress.ip_network("10.60.0.0/24"), ipaddress.ip_network("10.61.0.0/24")
    world.a.set_peer(PeerConfig(y, allowed_ips=(taken,)), 0.0)
    world.a.set_peer(PeerConfig(x), 0.0)
    world.publish(0.0)
    world.a.update_peer(x, 1.0, allowed_ips=(taken,))  # from Y to X: Y changed too
    first = world.a.plane_update()
    world.a.update_peer(x, 2.0, allowed_ips=(other,), replace_allowed_ips=True)  # and X lets it go
    world.plane.apply(merge(first, world.a.plane_update()), 2.0)
    whole = WorkerPlane(1, SHARDS, world.counters)
    whole.apply(world.a.plane_snapshot(), 2.0)
    assert _view(world.plane) == _view(whole)
    assert _view(world.plane)[3][y][1] == ()  # the control routes 10.60.0.0/24 to nobody now


def test_a_kept_session_keeps_its_replay_window_across_updates() -> None:
    world = World(1)
    world.connect()
    sealed = bytes(world.b.send_packet(ip4(B_IP, A_IP, b"once"), 1.0)[0].data)
    assert world.to_a(sealed, 1.0) == [ip4(B_IP, A_IP, b"once")]
    world.a.set_peer(PeerConfig(_new_key(random.Random(1)), allowed_ips=(ipaddress.ip_network("10.77.0.0/24"),)), 1.0)
    update = world.a.plane_update()
    assert not update.full and len(update.peers) == 1  # only the new peer, not B
    world.plane.apply(update, 1.1)
    assert world.to_a(sealed, 1.2) == []  # the window still remembers it


def test_an_index_that_moved_to_another_peer_stays_with_it() -> None:
    def session(index: int, created: float) -> SessionKeys:
        return SessionKeys(index, 99, bytes(32), bytes(32), created, -1, sends=False)

    plane = WorkerPlane(1, SHARDS, CounterSpace(1))
    plane.apply(PlaneSnapshot(1, 1420, (PeerPlane(b"z", None, (), (session(7, 1.0),)),)), 1.0)
    # In one update, the control freed Z's index and gave it to Y's new session; Y comes first.
    plane.apply(PlaneSnapshot(2, 1420, (PeerPlane(b"y", None, (), (session(7, 2.0),)), PeerPlane(b"z", None, (), ())),
                              full=False), 2.0)
    assert plane._keypairs[7].peer.public_key == b"y" and plane._keypairs[7].created == 2.0


def test_a_worker_that_reads_several_updates_at_once_applies_them_all() -> None:
    control_end, worker_end = multiprocessing.Pipe()
    udp = UdpSocket(0)
    worker = Worker(1, SHARDS, FakeTun(), udp, worker_end, CounterSpace(1), 0.0)  # type: ignore[arg-type]
    try:
        control_end.send(PlaneSnapshot(1, 1420, (PeerPlane(b"a", None, (), ()),)))
        control_end.send(PlaneSnapshot(2, 1420, (PeerPlane(b"b", None, (), ()),), full=False))
        control_end.send(PlaneSnapshot(3, 1400, (PeerPlane(b"c", None, (), ()),), removed=(b"a",), full=False))
        worker._from_control()
        assert _view(worker._plane)[:2] == (1400, 3)
        assert set(_view(worker._plane)[3]) == {b"b", b"c"}
    finally:
        udp.close()
        control_end.close()
        worker_end.close()


def test_updates_a_slow_worker_has_not_taken_wait_merged_in_one_message() -> None:
    control_end, worker_end = multiprocessing.Pipe()
    process = types.SimpleNamespace(name="worker 1", pid=0, join=lambda timeout=None: None, is_alive=lambda: False)
    link = WorkerLink(process, control_end)  # type: ignore[arg-type]
    link.post_snapshot(PlaneSnapshot(1, 1420, (PeerPlane(b"a", None, (), ()),)))
    link.post_snapshot(PlaneSnapshot(2, 1420, (PeerPlane(b"b", None, (), ()),), full=False))
    link.post_snapshot(PlaneSnapshot(3, 1420, (), removed=(b"a",), full=False))
    link.start()  # the writer finds all three waiting
    try:
        assert worker_end.poll(5)
        message = worker_end.recv()
        assert message.full and message.generation == 3 and [p.public_key for p in message.peers] == [b"b"]
    finally:
        link.close(5.0)
    assert worker_end.recv() is None  # then only the stop message
    worker_end.close()
