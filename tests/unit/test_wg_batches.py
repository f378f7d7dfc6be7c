"""The batch fast paths of the core (seal_packets, receive_batch_untrusted, the replay window's
accept_all) judged against the packet-by-packet paths they replace, and a batch's GSO send."""

from __future__ import annotations

import ipaddress
import random
import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from overlayd.wireguard import Datagram, DatagramBatch, TunPacket
from overlayd.wireguard.replay import ReplayWindow
from overlayd.wireguard.udp import UdpSocket, segments
from tests.unit.test_wg_device import A_ADDR, A_IP, B_IP, Pair, ip4


def twin_pairs(seed: int) -> tuple[Pair, Pair]:
    """Two identical worlds (same keys, same random choices) after one handshake each."""
    first, second = Pair(seed=seed), Pair(seed=seed)
    first.handshake(0.0)
    second.handshake(0.0)
    return first, second


def wire(outputs: list) -> list[bytes]:
    """Every datagram's bytes, a batch cut into its datagrams."""
    found = []
    for o in outputs:
        if isinstance(o, DatagramBatch):
            found += [bytes(d) for d in segments(o.data, o.size)]
        else:
            found.append(bytes(o.data))
    return found


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=1400), min_size=1, max_size=90), st.integers(0, 2**16))
def test_seal_packets_sends_what_send_packets_sends(sizes: list[int], seed: int) -> None:
    reference, fast = twin_pairs(seed % 50)
    packets = [ip4(A_IP, B_IP, bytes([n % 256]) * n) for n in sizes]
    expected = reference.a.send_packets(packets, 1.0)
    got = fast.a.seal_packets(packets, 1.0)
    assert wire(got) == wire(expected)
    for batch in got:  # each batch is one valid GSO send: equal sizes, a shorter last, kernel limits
        assert isinstance(batch, DatagramBatch | Datagram)
        if isinstance(batch, DatagramBatch):
            pieces = [len(d) for d in segments(batch.data, batch.size)]
            assert set(pieces[:-1]) <= {batch.size} and pieces[-1] <= batch.size
            assert len(pieces) <= 64 and len(batch.data) <= 65507
    assert reference.a.peer_status(reference.b.public_key) == fast.a.peer_status(fast.b.public_key)


def _batch(p: Pair, count: int, size: int = 1000, foreign: frozenset[int] = frozenset()) -> tuple[memoryview, int]:
    """`count` transport datagrams from A to B back to back, as a GRO receive hands them over;
    the packets at the `foreign` places have a source outside A's allowed IPs."""
    sealed = p.a.send_packets([ip4("10.0.9.9" if i in foreign else A_IP, B_IP, bytes([i]) * size)
                               for i in range(count)], 1.0)
    return memoryview(bytearray(b"".join(bytes(d.data) for d in sealed))), len(sealed[0].data)


@settings(max_examples=40, deadline=None)
@given(count=st.integers(2, 64), corrupt=st.lists(st.integers(0, 63), max_size=3), replay=st.booleans(),
       seed=st.integers(0, 49), foreign=st.frozensets(st.integers(0, 63), max_size=3))
def test_receive_batch_matches_one_by_one(count: int, corrupt: list[int], replay: bool, seed: int,
                                          foreign: frozenset[int]) -> None:
    reference, fast = twin_pairs(seed)
    data, size = _batch(reference, count, foreign=foreign)
    _batch(fast, count, foreign=foreign)  # the same counters used on both sides
    buf = bytearray(data)
    for i in corrupt:
        buf[(i % count) * size + 40] ^= 1
    for p in (reference, fast):  # a replayed batch is refused datagram by datagram
        if replay:
            p.b.receive_datagrams_untrusted([(bytes(d), A_ADDR) for d in segments(memoryview(bytes(buf)), size)], 1.0)
    one_by_one = [(bytes(d), A_ADDR) for d in segments(memoryview(buf), size)]
    expected = reference.b.receive_datagrams_untrusted(one_by_one, 1.0)
    result = fast.b.receive_batch_untrusted(memoryview(buf), size, A_ADDR, 1.0)
    assert result is not None
    packets, datagrams = result
    assert [bytes(p) for p in packets] == [o.data for o in expected if isinstance(o, TunPacket)]
    assert wire(datagrams) == wire([o for o in expected if not isinstance(o, TunPacket)])
    assert fast.b.drops == reference.b.drops
    assert fast.b.peer_status(fast.a.public_key) == reference.b.peer_status(reference.a.public_key)
    assert fast.b.get_timer() == reference.b.get_timer()


def test_receive_batch_declines_what_is_not_one_session() -> None:
    p = Pair(seed=3)
    p.handshake(0.0)
    data, size = _batch(p, 4)
    mixed = bytearray(data)
    mixed[size + 4] ^= 1  # the second datagram names another receiver
    assert p.b.receive_batch_untrusted(memoryview(mixed), size, A_ADDR, 1.0) is None
    handshake = bytearray(data)
    handshake[size] = 1
    assert p.b.receive_batch_untrusted(memoryview(handshake), size, A_ADDR, 1.0) is None
    assert p.b.receive_batch_untrusted(data[: size + 20], size, A_ADDR, 1.0) is None  # last is too short
    assert not p.b.drops  # declining changes nothing...
    assert p.b.receive_batch_untrusted(data, size, A_ADDR, 1.0) is not None  # ...and a good batch still opens


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 20000), max_size=70), max_size=8), st.integers(0, 3))
def test_replay_window_accept_all_is_accept_in_turn(batches: list[list[int]], shape: int) -> None:
    reference, fast = ReplayWindow(), ReplayWindow()
    for batch in batches:
        if shape and batch:  # mostly runs of consecutive counters, as a GRO batch brings them
            batch = list(range(batch[0], batch[0] + len(batch)))
        assert fast.accept_all(batch) == [reference.accept(c) for c in batch]
    probe = random.Random(len(batches)).sample(range(20100), 300)
    assert [fast.accept(c) for c in probe] == [reference.accept(c) for c in probe]


def test_a_batch_leaves_in_one_gso_send_and_arrives_as_its_datagrams() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)
    sender = UdpSocket(0)
    try:
        data = memoryview(b"".join(bytes([i]) * 100 for i in range(5)) + b"\x09" * 40)
        addr = sender.to_socket(ipaddress.ip_address("127.0.0.1"), receiver.getsockname()[1])
        sender.send([DatagramBatch(data, 100, addr), Datagram(b"single", addr)])
        got = [receiver.recv(2000) for _ in range(7)]
    finally:
        sender.close()
        receiver.close()
    assert got == [bytes([i]) * 100 for i in range(5)] + [b"\x09" * 40, b"single"]
    assert sender.sends == 2 and sender.send_errors == 0


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=3000), size=st.integers(0, 1500), keep_header=st.booleans())
def test_random_gro_batches_never_raise(data: bytes, size: int, keep_header: bool) -> None:
    # Whatever a GRO receive holds, the batch path declines or drops and counts; it never raises.
    p = Pair(seed=5)
    p.handshake(0.0)
    if keep_header and len(data) >= 16:  # a real session's header, so more of the path is reached
        genuine, _ = _batch(p, 1)
        data = bytes(genuine[:16]) + data[16:]
    result = p.b.receive_batch_untrusted(memoryview(data), size, A_ADDR, 1.0)
    assert result is None or isinstance(result, tuple)
