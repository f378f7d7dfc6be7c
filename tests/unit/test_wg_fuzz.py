"""Property tests: nothing a network can send makes the WireGuard core raise or forge packets."""

import random

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from overlayd.wireguard import Datagram, Output, TunPacket
from overlayd.wireguard.ratelimit import LoadDetector
from tests.unit.test_wg_device import A_ADDR, A_IP, B_ADDR, B_IP, Pair, ip4

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _session_samples() -> tuple[Pair, list[bytes]]:
    """An established pair plus one genuine message of every type sent to B."""
    p = Pair(seed=99)
    initiation = bytes(p.a.send_packet(ip4(A_IP, B_IP), 0.0)[0].data)
    p.pump(0.0, [Datagram(initiation, B_ADDR)])
    transport = bytes(p.a.send_packet(ip4(A_IP, B_IP, b"payload"), 1.0)[0].data)
    p.b.handle_timer(100.0)  # B's keepalive timer: a keepalive to A
    keepalive = bytes(p.b.datagrams_to_send(100.0)[0].data)
    loaded = Pair(seed=98, b_load=LoadDetector(threshold=0))
    first = loaded.a.send_packet(ip4(A_IP, B_IP), 0.0)[0].data
    cookie = bytes(loaded.b.receive_datagram_untrusted(bytes(first), A_ADDR, 0.0)[0].data)
    response = next(bytes(d.data) for s, d in p.wire if d.data[0] == 2)
    return p, [initiation, response, cookie, transport, keepalive]


PAIR, SAMPLES = _session_samples()


def _deliver_both(data: bytes, now: float) -> list[Output]:
    return (PAIR.b.receive_datagram_untrusted(data, A_ADDR, now)
            + PAIR.a.receive_datagram_untrusted(data, B_ADDR, now))


@FUZZ
@given(st.binary(max_size=300), st.floats(min_value=0, max_value=1000))
def test_random_datagrams_never_raise(data: bytes, now: float) -> None:
    for out in _deliver_both(data, now):
        assert not isinstance(out, TunPacket)


@FUZZ
@given(st.sampled_from([1, 2, 3, 4]), st.sampled_from([0, 15, 16, 31, 32, 48, 60, 64, 88, 92, 144, 148, 200]),
       st.randoms(use_true_random=False))
def test_typed_datagrams_of_interesting_sizes_never_raise(kind: int, size: int, rnd: random.Random) -> None:
    data = bytes([kind, 0, 0, 0]) + rnd.randbytes(size)
    for out in _deliver_both(data, 50.0):
        assert not isinstance(out, TunPacket)


@FUZZ
@given(
    st.integers(0, len(SAMPLES) - 1),
    st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 255)), min_size=1, max_size=4),
    st.sampled_from(["flip", "truncate", "extend"]),
    st.integers(0, 40),
)
def test_mutated_genuine_messages_are_dropped_never_raise(
    which: int, flips: list[tuple[int, int]], how: str, cut: int
) -> None:
    original = SAMPLES[which]
    data = bytearray(original)
    if how == "flip":
        for position, mask in flips:
            data[position % len(data)] ^= mask
    elif how == "truncate":
        del data[len(data) - 1 - cut % len(data):]
    else:
        data += bytes(cut + 1)
    assume(bytes(data) != original)  # two flips of one byte may cancel out
    for out in _deliver_both(bytes(data), 2.0):
        assert not isinstance(out, TunPacket)


@FUZZ
@given(st.binary(max_size=200))
def test_random_outbound_packets_never_raise(packet: bytes) -> None:
    for out in PAIR.a.send_packet(packet, 3.0):
        assert isinstance(out, Datagram)


class LossyNetwork(RuleBasedStateMachine):
    """Two devices over a wire that loses, duplicates, reorders and corrupts, on a scripted clock.

    Whatever happens, no call raises and B only ever delivers packets A really sent (and vice versa).
    """

    @initialize(seed=st.integers(0, 2**16))
    def setup(self, seed: int) -> None:
        self.pair = Pair(seed=seed)
        self.now = 0.0
        self.in_flight: list[tuple[str, bytes]] = []
        self.sent: dict[str, set[bytes]] = {"a": set(), "b": set()}
        self.counter = 0

    def _queue(self, producer: str, outputs: list[Output] | list[Datagram]) -> None:
        """Datagrams go on the wire; a TUN packet must be one the other device was given to send."""
        for out in outputs:
            if isinstance(out, TunPacket):
                assert out.data in self.sent["b" if producer == "a" else "a"]
            else:
                self.in_flight.append((producer, bytes(out.data)))

    @rule(from_a=st.booleans())
    def send(self, from_a: bool) -> None:
        self.counter += 1
        sender, device = ("a", self.pair.a) if from_a else ("b", self.pair.b)
        packet = ip4(A_IP, B_IP, self.counter.to_bytes(4, "big")) if from_a else \
            ip4(B_IP, A_IP, self.counter.to_bytes(4, "big"))
        self.sent[sender].add(packet)
        self._queue(sender, device.send_packet(packet, self.now))

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(0, 1000), fate=st.sampled_from(["deliver", "deliver", "drop", "duplicate", "corrupt"]),
          bit=st.integers(0, 10_000))
    def wire(self, index: int, fate: str, bit: int) -> None:
        sender, data = self.in_flight.pop(index % len(self.in_flight))
        if fate == "drop":
            return
        if fate == "duplicate":
            self.in_flight.append((sender, data))
        if fate == "corrupt":
            mutable = bytearray(data)
            mutable[bit % len(mutable)] ^= 1 << (bit % 8)
            data = bytes(mutable)
        receiver, device, source = ("b", self.pair.b, A_ADDR) if sender == "a" else ("a", self.pair.a, B_ADDR)
        self._queue(receiver, device.receive_datagram_untrusted(data, source, self.now))

    @rule(step=st.floats(min_value=0.001, max_value=60.0))
    def advance(self, step: float) -> None:
        self.now += step
        for name, device in (("a", self.pair.a), ("b", self.pair.b)):
            deadline = device.get_timer()
            if deadline is not None and deadline <= self.now:
                device.handle_timer(self.now)
            self._queue(name, device.datagrams_to_send(self.now))

    @invariant()
    def timers_are_in_the_future_or_due(self) -> None:
        if hasattr(self, "pair"):
            for device in (self.pair.a, self.pair.b):
                deadline = device.get_timer()
                assert deadline is None or deadline > 0


LossyNetwork.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_lossy_network = LossyNetwork.TestCase
