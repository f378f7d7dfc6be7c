"""Unit tests of the WireGuard core's parts: wire format, cookies, replay window, DoS guards, routing."""

import ipaddress
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlayd.wireguard import crypto, messages
from overlayd.wireguard.constants import (
    COOKIE_REFRESH_TIME,
    REJECT_AFTER_MESSAGES,
    REKEY_TIMEOUT,
    REPLAY_WINDOW_SIZE,
)
from overlayd.wireguard.crypto import RandomBytes
from overlayd.wireguard.cookie import MAX_REPLY_ATTEMPTS, CookieChecker, CookieGenerator, ReplyOutcome
from overlayd.wireguard.errors import HandshakeStateError
from overlayd.wireguard.handshake import TRANSITIONS, HandshakeEvent, HandshakeState, next_state
from overlayd.wireguard.ippacket import destination_untrusted, source_and_length_untrusted
from overlayd.wireguard.keypair import Keypair, Keypairs
from overlayd.wireguard.ratelimit import LoadDetector, RateLimiter, source_key
from overlayd.wireguard.replay import ReplayWindow
from overlayd.wireguard.routing import AllowedIPs
from overlayd.wireguard.xchacha import xaead_decrypt


def test_message_sizes_and_type_field() -> None:
    init = messages.pack_initiation(messages.Initiation(0x01020304, b"e" * 32, b"s" * 48, b"t" * 28))
    assert len(init) == 148 and init[:4] == b"\x01\x00\x00\x00" and init[4:8] == b"\x04\x03\x02\x01"
    assert messages.parse_initiation_untrusted(bytes(init)) == messages.Initiation(
        0x01020304, b"e" * 32, b"s" * 48, b"t" * 28
    )
    resp = messages.pack_response(messages.Response(5, 6, b"e" * 32, b"n" * 16))
    assert len(resp) == 92 and resp[:4] == b"\x02\x00\x00\x00"
    assert messages.parse_response_untrusted(bytes(resp)) == messages.Response(5, 6, b"e" * 32, b"n" * 16)
    reply = messages.pack_cookie_reply(messages.CookieReply(9, b"n" * 24, b"c" * 32))
    assert len(reply) == 64 and reply[:4] == b"\x03\x00\x00\x00"
    assert messages.TRANSPORT_HEADER.size == 16
    assert messages.TRANSPORT_HEADER.pack(4, 7, 1) == b"\x04\0\0\0\x07\0\0\0\x01" + bytes(7)


def test_parsers_reject_wrong_size_and_reserved_bytes() -> None:
    init = bytes(messages.pack_initiation(messages.Initiation(1, bytes(32), bytes(48), bytes(28))))
    assert messages.parse_initiation_untrusted(init[:-1]) is None
    assert messages.parse_initiation_untrusted(init + b"x") is None
    assert messages.parse_initiation_untrusted(b"\x01\x00\x01\x00" + init[4:]) is None
    assert messages.parse_response_untrusted(init[:92]) is None
    assert messages.parse_cookie_reply_untrusted(bytes(63)) is None


def _signed_initiation(generator: CookieGenerator, now: float) -> bytes:
    msg = messages.pack_initiation(messages.Initiation(42, bytes(32), bytes(48), bytes(28)))
    generator.add_macs(msg, now)
    return bytes(msg)


def test_mac1_binds_the_receiver_public_key() -> None:
    responder_pub = crypto.public_key(crypto.private_key_object(bytes(range(32))))
    other_pub = crypto.public_key(crypto.private_key_object(bytes(range(1, 33))))
    msg = _signed_initiation(CookieGenerator(responder_pub), 0.0)
    assert msg[-16:] == bytes(16)  # no cookie yet: mac2 is zero
    assert msg[-32:-16] == crypto.mac(crypto.hash_(b"mac1----", responder_pub), msg[:-32])
    assert CookieChecker(responder_pub).check_mac1(msg)
    assert not CookieChecker(other_pub).check_mac1(msg)
    tampered = bytearray(msg)
    tampered[10] ^= 1
    assert not CookieChecker(responder_pub).check_mac1(bytes(tampered))


def _reply(checker: CookieChecker, msg: bytes, source: bytes, now: float, rng: RandomBytes) -> messages.CookieReply:
    raw = checker.reply_unless_mac2(msg, source, now, rng)
    assert raw is not None
    reply = messages.parse_cookie_reply_untrusted(raw)
    assert reply is not None
    return reply


def test_cookie_reply_round_trip_and_mac2() -> None:
    rng = random.Random(3).randbytes
    responder_pub = crypto.public_key(crypto.private_key_object(bytes(range(32))))
    checker, generator = CookieChecker(responder_pub), CookieGenerator(responder_pub)
    source = ipaddress.ip_address("198.18.0.11").packed + (51820).to_bytes(2, "big")
    msg = _signed_initiation(generator, 0.0)
    reply = _reply(checker, msg, source, 0.0, rng)
    assert reply.receiver == 42
    assert generator.consume_reply(reply, 1.0) is ReplyOutcome.ACCEPTED
    again = _signed_initiation(generator, 2.0)
    assert again[-16:] != bytes(16)
    assert checker.reply_unless_mac2(again, source, 2.0, rng) is None
    other_source = ipaddress.ip_address("198.18.0.12").packed + (51820).to_bytes(2, "big")
    assert checker.reply_unless_mac2(again, other_source, 2.0, rng) is not None
    # The secret expires after two minutes; the cookie with it.
    assert checker.reply_unless_mac2(again, source, 2.0 + COOKIE_REFRESH_TIME, rng) is not None
    # And the initiator stops sending mac2 once its cookie is two minutes old.
    assert _signed_initiation(generator, 1.0 + COOKIE_REFRESH_TIME + 0.1)[-16:] == bytes(16)


def test_cookie_replies_have_unique_nonces_and_open_as_xchacha() -> None:
    # Sealing reuses one HChaCha20 subkey per secret: the nonces must still never repeat, and
    # each reply must open with a from-scratch XChaCha20-Poly1305 (what the initiator does).
    rng = random.Random(7).randbytes
    pub = crypto.public_key(crypto.private_key_object(bytes(range(32))))
    checker = CookieChecker(pub)
    msg = _signed_initiation(CookieGenerator(pub), 0.0)
    replies = [_reply(checker, msg, b"src", t, rng) for t in (0.0, 1.0, 2.0, 200.0, 201.0)]
    assert len({r.nonce for r in replies}) == len(replies)
    cookies = [xaead_decrypt(crypto.hash_(b"cookie--", pub), r.nonce, r.encrypted_cookie, msg[-32:-16])
               for r in replies]
    assert None not in cookies
    assert cookies[0] == cookies[1] == cookies[2] != cookies[3] == cookies[4]  # a new secret after 2 minutes


def test_cookie_reply_must_match_last_mac1() -> None:
    rng = random.Random(4).randbytes
    pub = crypto.public_key(crypto.private_key_object(bytes(range(32))))
    checker, generator = CookieChecker(pub), CookieGenerator(pub)
    unrelated = bytes(messages.pack_initiation(messages.Initiation(1, b"x" * 32, bytes(48), bytes(28))))
    reply = _reply(checker, unrelated, b"src", 0.0, rng)
    assert generator.consume_reply(reply, 0.0) is ReplyOutcome.UNEXPECTED  # we sent nothing yet
    _signed_initiation(generator, 0.0)
    assert generator.consume_reply(reply, 0.0) is ReplyOutcome.BAD  # bound to another message's mac1


def test_cookie_reply_only_while_our_message_is_in_flight_and_once() -> None:
    rng = random.Random(6).randbytes
    pub = crypto.public_key(crypto.private_key_object(bytes(range(32))))
    checker, generator = CookieChecker(pub), CookieGenerator(pub)
    late = _reply(checker, _signed_initiation(generator, 0.0), b"src", 0.0, rng)
    assert generator.consume_reply(late, REKEY_TIMEOUT + 0.1) is ReplyOutcome.UNEXPECTED
    reply = _reply(checker, _signed_initiation(generator, 10.0), b"src", 10.0, rng)
    forged = messages.CookieReply(42, rng(24), rng(32))
    for _ in range(MAX_REPLY_ATTEMPTS - 1):
        assert generator.consume_reply(forged, 10.0) is ReplyOutcome.BAD
    assert generator.consume_reply(reply, 10.0) is ReplyOutcome.ACCEPTED
    assert generator.consume_reply(reply, 10.0) is ReplyOutcome.UNEXPECTED  # one cookie per message
    _signed_initiation(generator, 20.0)
    for _ in range(MAX_REPLY_ATTEMPTS):
        assert generator.consume_reply(forged, 20.0) is ReplyOutcome.BAD
    assert generator.consume_reply(forged, 20.0) is ReplyOutcome.UNEXPECTED  # the cap


def test_replay_window_basic() -> None:
    w = ReplayWindow()
    assert w.accept(0) and not w.accept(0)
    assert w.accept(2) and w.accept(1) and not w.accept(1)
    assert w.accept(10_000)
    assert w.accept(10_000 - REPLAY_WINDOW_SIZE)  # oldest still in the window
    assert not w.accept(10_000 - REPLAY_WINDOW_SIZE - 1)  # just outside
    assert not w.accept(REJECT_AFTER_MESSAGES)
    assert w.accept(REJECT_AFTER_MESSAGES - 1) and not w.accept(REJECT_AFTER_MESSAGES - 1)


def test_replay_window_big_jump_clears_old_bits() -> None:
    w = ReplayWindow()
    for i in range(100):
        assert w.accept(i)
    assert w.accept(1 << 40)
    assert not w.accept(99)  # far behind now
    assert w.accept((1 << 40) - 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=20_000), max_size=300))
def test_replay_window_matches_a_reference_model(counters: list[int]) -> None:
    """A counter is accepted iff it is unseen and at most 8128 behind the highest accepted so far."""
    w = ReplayWindow()
    seen: set[int] = set()
    highest = -1
    for c in counters:
        got = w.accept(c)
        if c in seen or (highest >= 0 and highest - c > REPLAY_WINDOW_SIZE):
            assert not got
        else:
            assert got
        if got:
            seen.add(c)
            highest = max(highest, c)


def test_rate_limiter_burst_then_steady_rate() -> None:
    limiter = RateLimiter()
    key = source_key("198.18.0.11")
    assert [limiter.allow(key, 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow(source_key("198.18.0.12"), 0.0)  # other sources have their own bucket
    assert limiter.allow(key, 0.05)  # one token per 1/20 s
    assert not limiter.allow(key, 0.06)
    assert limiter.allow(key, 10.0) and limiter.allow(key, 10.0)  # refilled after idling
    assert len(limiter) <= 2


def test_rate_limiter_keys() -> None:
    assert source_key("2001:db8:1:2::5") == source_key("2001:db8:1:2:ffff::1")  # same /64
    assert source_key("2001:db8:1:3::5") != source_key("2001:db8:1:2::5")
    assert source_key("::ffff:198.18.0.1") == source_key("198.18.0.1")


def test_load_detector() -> None:
    load = LoadDetector(threshold=3, window=1.0)
    assert not any(load.observe_handshake(0.1 * i) for i in range(3))
    assert load.observe_handshake(0.35)  # fourth within a second
    assert load.observe_handshake(1.2)  # stays under load for a second
    assert not load.observe_handshake(2.5)


def test_allowed_ips_longest_prefix_match() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert("10.0.0.0/8", "a")
    table.insert("10.1.0.0/16", "b")
    table.insert("10.1.2.3/32", "c")
    table.insert("0.0.0.0/0", "d")
    table.insert("fd00::/8", "a")
    table.insert("fd00:1::/32", "b")
    def ip(text: str) -> bytes:
        return ipaddress.ip_address(text).packed

    assert table.lookup(ip("10.2.3.4")) == "a"
    assert table.lookup(ip("10.1.9.9")) == "b"
    assert table.lookup(ip("10.1.2.3")) == "c"
    assert table.lookup(ip("192.0.2.1")) == "d"
    assert table.lookup(ip("fd00:1::1")) == "b"
    assert table.lookup(ip("fd01::1")) == "a"
    assert table.lookup(ip("2001:db8::1")) is None
    table.insert("10.1.0.0/16", "a")  # a prefix has one owner: it moves
    assert table.lookup(ip("10.1.9.9")) == "a"
    assert ipaddress.ip_network("10.1.0.0/16") not in table.networks_of("b")
    table.remove_owner("a")
    assert table.lookup(ip("10.2.3.4")) == "d"
    assert table.lookup(ip("fd00:1::1")) == "b"
    assert table.networks_of("a") == []


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32), st.sampled_from("abc")), max_size=20),
    st.lists(st.integers(0, 2**32 - 1), max_size=20),
)
def test_allowed_ips_match_brute_force(routes: list[tuple[int, int, str]], probes: list[int]) -> None:
    table: AllowedIPs[str] = AllowedIPs()
    model: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, str] = {}
    for addr, length, owner in routes:
        net = ipaddress.ip_network((addr, length), strict=False)
        table.insert(net, owner)
        model[net] = owner
    for probe in probes + [a for a, _, _ in routes]:
        address = ipaddress.IPv4Address(probe)
        matches = [n for n in model if address in n]
        expected = model[max(matches, key=lambda n: n.prefixlen)] if matches else None
        assert table.lookup(address.packed) == expected


def _ipv4(src: str, dst: str, payload: bytes = b"", total: int | None = None) -> bytes:
    length = 20 + len(payload) if total is None else total
    return struct.pack(
        ">BBHHHBBH4s4s", 0x45, 0, length, 0, 0, 64, 17, 0,
        ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed,
    ) + payload


def test_inner_packet_fields() -> None:
    pkt = _ipv4("10.0.0.1", "10.0.0.2", b"abc")
    assert destination_untrusted(pkt) == ipaddress.ip_address("10.0.0.2").packed
    assert source_and_length_untrusted(pkt + bytes(13)) == (ipaddress.ip_address("10.0.0.1").packed, 23)
    assert source_and_length_untrusted(_ipv4("10.0.0.1", "10.0.0.2", b"abc", total=99)) is None
    assert source_and_length_untrusted(_ipv4("10.0.0.1", "10.0.0.2", total=19)) is None
    v6 = bytes([0x60, 0, 0, 0]) + struct.pack(">HBB", 3, 17, 64) + bytes(15) + b"\x01" + bytes(15) + b"\x02" + b"xyz"
    assert destination_untrusted(v6) == bytes(15) + b"\x02"
    assert source_and_length_untrusted(v6) == (bytes(15) + b"\x01", 43)
    assert destination_untrusted(b"\x45" + bytes(10)) is None
    assert destination_untrusted(b"\x75" + bytes(40)) is None


def test_handshake_transition_table() -> None:
    S, E = HandshakeState, HandshakeEvent
    assert next_state(S.ZEROED, E.CREATE_INITIATION) is S.INITIATION_CREATED
    assert next_state(S.INITIATION_CREATED, E.CONSUME_RESPONSE) is S.RESPONSE_CONSUMED
    assert next_state(S.INITIATION_CONSUMED, E.CREATE_RESPONSE) is S.RESPONSE_CREATED
    assert next_state(S.RESPONSE_CONSUMED, E.BEGIN_SESSION) is S.ZEROED
    assert next_state(S.INITIATION_CREATED, E.CONSUME_INITIATION) is S.INITIATION_CONSUMED
    for state, event in [(S.ZEROED, E.CONSUME_RESPONSE), (S.ZEROED, E.BEGIN_SESSION),
                         (S.INITIATION_CREATED, E.CREATE_RESPONSE), (S.INITIATION_CONSUMED, E.BEGIN_SESSION)]:
        assert (state, event) not in TRANSITIONS
        with pytest.raises(HandshakeStateError):
            next_state(state, event)


def _keypair(index: int) -> Keypair:
    return Keypair(bytes(32), bytes(32), created=0.0, is_initiator=False, local_index=index, remote_index=0,
                   peer=None)  # type: ignore[arg-type]


def test_keypair_rotation_rules() -> None:
    pairs = Keypairs()
    k1, k2, k3, k4 = (_keypair(i) for i in range(1, 5))
    assert pairs.install_as_initiator(k1) == [] and pairs.current is k1
    assert pairs.install_as_responder(k2) == [] and pairs.next is k2 and pairs.current is k1
    assert pairs.confirm(k1) == (False, [])
    assert pairs.confirm(k2) == (True, []) and (pairs.previous, pairs.current, pairs.next) == (k1, k2, None)
    assert pairs.install_as_responder(k3) == [k1] and pairs.previous is None and pairs.next is k3
    # Initiating while a responder keypair is unconfirmed keeps it as previous, drops current.
    assert pairs.install_as_initiator(k4) == [k2]
    assert (pairs.previous, pairs.current, pairs.next) == (k3, k4, None)
    assert set(pairs.clear()) == {k3, k4}
