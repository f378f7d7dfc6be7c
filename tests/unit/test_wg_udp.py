"""Pure parts of the engine's UDP layer: GSO grouping, GRO splitting, endpoint conversions."""

import ipaddress
import socket

import pytest

from overlayd.errors import KernelError
from overlayd.wireguard import Datagram
from overlayd.wireguard.udp import MAX_SEGMENTS, from_socket, gso_runs, max_gso_segments, segments, to_socket_address

A = ("::ffff:198.18.1.2", 51820, 0, 0)
B = ("::ffff:198.18.1.3", 51820, 0, 0)


def sizes(runs) -> list[tuple[tuple, int, list[int]]]:  # type: ignore[no-untyped-def]
    return [(addr[0], size, [len(b) for b in bufs]) for addr, size, bufs in runs]


def test_gso_runs_group_equal_sizes_per_address() -> None:
    datagrams = [Datagram(bytes(100), A)] * 3 + [Datagram(bytes(40), A), Datagram(bytes(100), A),
                                                  Datagram(bytes(148), A), Datagram(bytes(100), B)]
    assert sizes(gso_runs(datagrams)) == [
        (A[0], 100, [100, 100, 100, 40]),  # a short segment may end a run...
        (A[0], 100, [100]),  # ...and nothing may follow it
        (A[0], 148, [148]),  # a longer datagram starts a new run
        (B[0], 100, [100]),
    ]


def test_gso_runs_respect_kernel_limits() -> None:
    assert [len(b) for _, _, b in gso_runs([Datagram(bytes(10), A)] * 100)] == [MAX_SEGMENTS, 100 - MAX_SEGMENTS]
    assert [len(b) for _, _, b in gso_runs([Datagram(bytes(1452), A)] * 46)] == [45, 1]
    assert max_gso_segments(1452) == 45 and max_gso_segments(100) == MAX_SEGMENTS and max_gso_segments(70000) == 1


def test_segments_cut_a_gro_receive() -> None:
    data = memoryview(bytes(range(250)))
    pieces = [bytes(s) for s in segments(data, 100)]
    assert pieces == [bytes(range(100)), bytes(range(100, 200)), bytes(range(200, 250))]
    assert [len(s) for s in segments(data, 0)] == [250]
    assert [len(s) for s in segments(data, 250)] == [250]


def test_endpoint_conversions() -> None:
    v4, v6 = ipaddress.ip_address("198.18.1.2"), ipaddress.ip_address("2001:db8::1")
    assert to_socket_address(socket.AF_INET6, v4, 51820) == ("::ffff:198.18.1.2", 51820, 0, 0)
    assert to_socket_address(socket.AF_INET6, v6, 7) == ("2001:db8::1", 7, 0, 0)
    assert to_socket_address(socket.AF_INET6, ipaddress.ip_address("fe80::1%3"), 7) == ("fe80::1", 7, 0, 3)
    assert to_socket_address(socket.AF_INET, v4, 1) == ("198.18.1.2", 1)
    with pytest.raises(KernelError):
        to_socket_address(socket.AF_INET, v6, 1)
    assert from_socket(("::ffff:198.18.1.2", 51820, 0, 0)) == (v4, 51820)
    assert from_socket(("198.18.1.2", 51820)) == (v4, 51820)
    assert from_socket(("fe80::1", 9, 0, 3)) == (ipaddress.ip_address("fe80::1%3"), 9)
