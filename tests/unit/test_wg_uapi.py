"""The UAPI text protocol: parser, serializers, the per-connection server loop, the client, and how
a set request maps onto the core Device (wireguard-go's semantics)."""

import errno
import ipaddress
import os
import socket
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlayd.wireguard import Device, crypto
from overlayd.wireguard.engine import apply_peer_update
from overlayd.wireguard.uapi import (
    ZERO_KEY,
    DeviceState,
    PeerState,
    PeerUpdate,
    SetRequest,
    UapiError,
    format_get,
    format_set,
    parse_get_untrusted,
    parse_set_untrusted,
)
from overlayd.wireguard.uapi_server import UapiClient, UapiServer, serve_connection

K1, K2, K3 = (bytes([i]) * 32 for i in (1, 2, 3))
PSK = bytes(range(32))
net = ipaddress.ip_network
v4 = ipaddress.IPv4Address


def lines(*items: str) -> str:
    return "".join(f"{item}\n" for item in items) + "\n"


def test_parse_set_as_wg_sends_it() -> None:
    request = parse_set_untrusted(lines(
        f"private_key={K1.hex()}", "listen_port=51820", "fwmark=4660", "replace_peers=true",
        f"public_key={K2.hex()}", f"preshared_key={PSK.hex()}", "endpoint=198.18.1.2:51821",
        "persistent_keepalive_interval=25", "replace_allowed_ips=true", "allowed_ip=10.99.0.2/32",
        "allowed_ip=fd99::/64", "protocol_version=1",
        f"public_key={K3.hex().upper()}", "remove=true",
        f"public_key={K1.hex()}", "update_only=true", "endpoint=[fe80::1%eth0]:7",
    ))
    assert request == SetRequest(
        private_key=K1, listen_port=51820, fwmark=4660, replace_peers=True,
        peers=(
            PeerUpdate(K2, preshared_key=PSK, endpoint=(v4("198.18.1.2"), 51821), persistent_keepalive=25,
                       replace_allowed_ips=True, allowed_ips=(net("10.99.0.2/32"), net("fd99::/64"))),
            PeerUpdate(K3, remove=True),
            PeerUpdate(K1, update_only=True, endpoint=(ipaddress.IPv6Address("fe80::1%eth0"), 7)),
        ),
    )


def test_allowed_ip_host_bits_are_cleared() -> None:
    request = parse_set_untrusted(lines(f"public_key={K2.hex()}", "allowed_ip=10.1.2.3/16"))
    assert request.peers[0].allowed_ips == (net("10.1.0.0/16"),)


@pytest.mark.parametrize("body, code", [
    (lines("private_key=abc"), errno.EINVAL),
    (lines(f"private_key={K1.hex()}0"), errno.EINVAL),
    (lines("listen_port=65536"), errno.EINVAL),
    (lines("listen_port=+1"), errno.EINVAL),
    (lines("listen_port= 1"), errno.EINVAL),
    (lines("fwmark=4294967296"), errno.EINVAL),
    (lines("replace_peers=false"), errno.EINVAL),
    (lines("endpoint=1.2.3.4:5"), errno.EINVAL),  # a peer key before any public_key
    (lines("bogus=1"), errno.EINVAL),
    (lines(f"public_key={K2.hex()}", "listen_port=1"), errno.EINVAL),
    (lines(f"public_key={K2.hex()}", "endpoint=1.2.3.4"), errno.EINVAL),
    (lines(f"public_key={K2.hex()}", "endpoint=::1:51820"), errno.EINVAL),
    (lines(f"public_key={K2.hex()}", "endpoint=[1.2.3.4]:5"), errno.EINVAL),
    (lines(f"public_key={K2.hex()}", "endpoint=example.com:5"), errno.EINVAL),
    (lines(f"public_key={K2.hex()}", "endpoint=1.2.3.4:70000"), errno.EINVAL),
    (lines(f"public_key={K2.hex()}", "allowed_ip=10.0.0.1"), errno.EINVAL),
    (lines(f"public_key={K2.hex()}", "allowed_ip=10.0.0.0/33"), errno.EINVAL),
    (lines(f"public_key={K2.hex()}", "allowed_ip=010.0.0.0/8"), errno.EINVAL),
    (lines(f"public_key={K2.hex()}", "persistent_keepalive_interval=65536"), errno.EINVAL),
    (lines(f"public_key={K2.hex()}", "protocol_version=2"), errno.EINVAL),
    (lines(f"public_key={K2.hex()}", "remove=1"), errno.EINVAL),
    (lines("no equals sign"), errno.EPROTO),
    ("listen_port=1\n", errno.EPROTO),  # no blank line
    ("listen_port=1\n\nmore\n", errno.EPROTO),
])
def test_bad_set_requests_are_refused(body: str, code: int) -> None:
    with pytest.raises(UapiError) as info:
        parse_set_untrusted(body)
    assert info.value.errno == code


@given(st.text(max_size=300))
def test_set_parser_never_crashes(text: str) -> None:
    try:
        parse_set_untrusted(text)
    except UapiError as e:
        assert e.errno > 0


@given(st.text(alphabet="=\nabcdefgilnoprstuy_0123456789", max_size=300))
def test_get_parser_never_crashes(text: str) -> None:
    try:
        parse_get_untrusted(text)
    except UapiError as e:
        assert e.errno > 0


def test_set_round_trips() -> None:
    request = SetRequest(
        private_key=ZERO_KEY, listen_port=0, fwmark=0, replace_peers=True,
        peers=(
            PeerUpdate(K2, update_only=True, preshared_key=ZERO_KEY, endpoint=(ipaddress.IPv6Address("2001:db8::1"), 9),
                       persistent_keepalive=0, replace_allowed_ips=True, allowed_ips=(net("0.0.0.0/0"), net("::/0"))),
            PeerUpdate(K3, remove=True),
        ),
    )
    text = format_set(request)
    assert text.startswith("set=1\n") and text.endswith("\n\n")
    assert parse_set_untrusted(text.removeprefix("set=1\n")) == request


def test_get_answer_matches_wireguard_go_and_round_trips() -> None:
    state = DeviceState(
        private_key=K1, listen_port=51820, fwmark=0,
        peers=(
            PeerState(K2, preshared_key=None, endpoint=(v4("198.18.1.2"), 51820),
                      last_handshake_ns=1_700_000_000_123_456_789,
                      rx_bytes=10, tx_bytes=20, persistent_keepalive=25, allowed_ips=(net("10.99.0.2/32"),)),
            PeerState(K3, preshared_key=PSK),
        ),
    )
    text = format_get(state)
    assert text == lines(
        f"private_key={K1.hex()}", "listen_port=51820",
        f"public_key={K2.hex()}", f"preshared_key={ZERO_KEY.hex()}", "protocol_version=1",
        "endpoint=198.18.1.2:51820", "last_handshake_time_sec=1700000000", "last_handshake_time_nsec=123456789",
        "tx_bytes=20", "rx_bytes=10", "persistent_keepalive_interval=25", "allowed_ip=10.99.0.2/32",
        f"public_key={K3.hex()}", f"preshared_key={PSK.hex()}", "protocol_version=1",
        "last_handshake_time_sec=0", "last_handshake_time_nsec=0", "tx_bytes=0", "rx_bytes=0",
        "persistent_keepalive_interval=0", "errno=0",
    )
    assert parse_get_untrusted(text) == state


def test_get_answer_with_errno_raises() -> None:
    with pytest.raises(UapiError) as info:
        parse_get_untrusted("errno=-98\n\n")
    assert info.value.errno == errno.EADDRINUSE
    with pytest.raises(UapiError):
        parse_get_untrusted("listen_port=1\n\n")  # no errno line


class FakeTarget:
    def __init__(self) -> None:
        self.applied: list[SetRequest] = []
        self.fail: Exception | None = None

    def get_state(self) -> DeviceState:
        return DeviceState(listen_port=1234)

    def apply(self, request: SetRequest) -> None:
        if self.fail is not None:
            raise self.fail
        self.applied.append(request)


def converse(target: FakeTarget, request: bytes) -> bytes:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(request)
        theirs.shutdown(socket.SHUT_WR)
        with ours.makefile("rwb") as stream:
            serve_connection(stream, target)
        ours.shutdown(socket.SHUT_WR)
        return theirs.makefile("rb").read()


def test_server_answers_several_requests_on_one_connection() -> None:
    target = FakeTarget()
    answer = converse(target, b"get=1\n\nset=1\nlisten_port=7\n\nset=1\nlisten_port=x\n\nget=1\n\n")
    assert answer == b"listen_port=1234\nerrno=0\n\nerrno=0\n\nerrno=-22\n\nlisten_port=1234\nerrno=0\n\n"
    assert target.applied == [SetRequest(listen_port=7)]


def test_server_hangs_up_on_unknown_operation_and_reports_failures() -> None:
    target = FakeTarget()
    assert converse(target, b"hello=1\n\n") == b""
    assert converse(target, b"get=1\nX") == b"errno=-22\n\n"
    assert converse(target, b"set=1\nlisten_port=1\n") == b""  # cut short: no answer, nothing applied
    assert converse(target, b"set=1\n\xff=1\n\n") == b"errno=-22\n\n"
    target.fail = UapiError(errno.EADDRINUSE, "port in use")
    assert converse(target, b"set=1\nlisten_port=1\n\n") == b"errno=-98\n\n"
    target.fail = RuntimeError("bug")
    assert converse(target, b"set=1\nlisten_port=1\n\n") == b"errno=-55\n\n"
    assert target.applied == []


def test_client_and_server_over_a_socket(tmp_path: Path) -> None:
    target = FakeTarget()
    server = UapiServer(tmp_path / "wgt0.sock", target)
    server.open()
    assert (tmp_path / "wgt0.sock").stat().st_mode & 0o077 == 0  # root only: it hands out keys
    wake_r, wake_w = os.pipe()
    thread = threading.Thread(target=server.serve_until, args=(wake_r,))
    thread.start()
    try:
        client = UapiClient("wgt0", tmp_path)
        assert client.wait_ready(timeout=5) == DeviceState(listen_port=1234)
        client.set(SetRequest(listen_port=9, peers=(PeerUpdate(K2, remove=True),)))
        assert target.applied == [SetRequest(listen_port=9, peers=(PeerUpdate(K2, remove=True),))]
        target.fail = UapiError(errno.EADDRINUSE, "in use")
        with pytest.raises(UapiError) as info:
            client.set(SetRequest(listen_port=10))
        assert info.value.errno == errno.EADDRINUSE
        with pytest.raises(Exception, match="in use"):
            UapiServer(tmp_path / "wgt0.sock", target).open()  # a live socket is not taken over
    finally:
        os.write(wake_w, b"x")
        thread.join(5)
        server.close()
    assert not (tmp_path / "wgt0.sock").exists()
    # A stale socket file (its process gone) is replaced.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "wgt0.sock"))
    stale.close()
    server = UapiServer(tmp_path / "wgt0.sock", target)
    server.open()
    server.close()


# apply_peer_update: the mapping of a peer section onto the core Device.

def device() -> Device:
    return Device(crypto.generate_private_key(os.urandom), rng=os.urandom)


def peer_key() -> bytes:
    return crypto.public_key(crypto.private_key_object(crypto.generate_private_key(os.urandom)))


ENDPOINT = ("198.18.1.2", 51820)


def test_peer_update_adds_merges_and_replaces() -> None:
    d, pk = device(), peer_key()
    apply_peer_update(d, PeerUpdate(pk, preshared_key=PSK, persistent_keepalive=0, allowed_ips=(net("10.0.0.0/24"),)),
                      ENDPOINT, 0.0)
    apply_peer_update(d, PeerUpdate(pk, allowed_ips=(net("10.0.1.0/24"),)), None, 1.0)
    status = d.peer_status(pk)
    assert status.allowed_ips == (net("10.0.0.0/24"), net("10.0.1.0/24"))
    assert status.preshared_key == PSK and status.endpoint == ENDPOINT  # kept
    apply_peer_update(d, PeerUpdate(pk, replace_allowed_ips=True, allowed_ips=(net("10.0.2.0/24"),),
                                    preshared_key=ZERO_KEY, persistent_keepalive=5), None, 2.0)
    status = d.peer_status(pk)
    assert status.allowed_ips == (net("10.0.2.0/24"),)
    assert status.preshared_key is None and status.persistent_keepalive == 5
    apply_peer_update(d, PeerUpdate(pk, allowed_ips=(net("10.0.3.0/24"),)), None, 3.0)
    assert d.peer_status(pk).persistent_keepalive == 5


def test_peer_update_only_remove_and_own_key() -> None:
    d, pk = device(), peer_key()
    apply_peer_update(d, PeerUpdate(pk, update_only=True, allowed_ips=(net("10.0.0.0/24"),)), None, 0.0)
    assert d.peer_statuses() == []
    apply_peer_update(d, PeerUpdate(pk), None, 0.0)
    apply_peer_update(d, PeerUpdate(pk, update_only=True, persistent_keepalive=9), None, 0.0)
    assert d.peer_status(pk).persistent_keepalive == 9
    apply_peer_update(d, PeerUpdate(pk, remove=True), None, 0.0)
    apply_peer_update(d, PeerUpdate(pk, remove=True), None, 0.0)  # removing an absent peer is fine
    apply_peer_update(d, PeerUpdate(d.public_key, allowed_ips=(net("10.9.0.0/16"),)), None, 0.0)
    assert d.peer_statuses() == []


def test_allowed_ip_moves_between_peers() -> None:
    d, first, second = device(), peer_key(), peer_key()
    apply_peer_update(d, PeerUpdate(first, allowed_ips=(net("10.0.0.0/24"), net("10.0.9.0/24"))), None, 0.0)
    apply_peer_update(d, PeerUpdate(second, allowed_ips=(net("10.0.9.0/24"),)), None, 0.0)
    assert d.peer_status(first).allowed_ips == (net("10.0.0.0/24"),)
    assert d.peer_status(second).allowed_ips == (net("10.0.9.0/24"),)


def test_an_empty_set_request_is_accepted_like_wireguard_go() -> None:
    from overlayd.wireguard.uapi import SetRequest, format_set, parse_set_untrusted

    assert parse_set_untrusted(format_set(SetRequest()).removeprefix("set=1\n")) == SetRequest()


def test_counters_round_trip_and_refusals() -> None:
    import pytest

    from overlayd.wireguard.uapi import UapiError, format_counters, parse_counters_untrusted

    counters = {"drop_replay": 2, "drop_bad_mac": 0, "tun_reads": 10}
    assert parse_counters_untrusted(format_counters(counters)) == counters
    with pytest.raises(UapiError):
        parse_counters_untrusted("errno=-22\n\n")
    with pytest.raises(UapiError):
        parse_counters_untrusted("bad name=1\nerrno=0\n\n")
