"""TCP segmentation (TUN reads) and coalescing (TUN writes) of the WireGuard engine's offload layer.

Checksums are checked against scapy's and a plain word-by-word RFC 1071 sum; the numpy and the
pure-Python payload sums are both exercised.
"""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from overlayd.wireguard import offload
from overlayd.wireguard.offload import (
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    NEEDS_CSUM,
    PLAIN_VNET_HDR,
    VNET_HDR,
    VNET_HDR_SIZE,
    checksum,
    coalesce,
    ones_sum,
)

SRC4, DST4 = "10.99.0.1", "10.99.0.2"


def split_frame(frame: memoryview) -> list[bytes]:
    """offload.split_frame with its segments as bytes (they may be views of one buffer)."""
    return [bytes(s) for s in offload.split_frame(frame)]
SRC6, DST6 = "fd99::1", "fd99::2"
TS_OPTIONS = [("NOP", None), ("NOP", None), ("Timestamp", (12345, 678))]


@pytest.fixture(params=["numpy", "pure"])
def payload_sums(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "pure":
        monkeypatch.setattr(offload, "_np", None)
    elif offload._np is None:
        pytest.skip("numpy not installed")
    return request.param


def reference_sum(data: bytes) -> int:
    """RFC 1071 the slow way: 16-bit words with end-around carry."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack(">H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def tcp_packet(version: int, payload: bytes, *, seq: int = 1000, flags: str = "A", sport: int = 40000,
               ack: int = 7, ip_id: int = 100, options: list | None = None) -> bytes:
    tcp = TCP(sport=sport, dport=5201, seq=seq, ack=ack, flags=flags, window=502,
              options=TS_OPTIONS if options is None else options)
    if version == 4:
        return bytes(IP(src=SRC4, dst=DST4, id=ip_id, flags="DF", ttl=64) / tcp / Raw(payload))
    return bytes(IPv6(src=SRC6, dst=DST6, hlim=64) / tcp / Raw(payload))


def partial_checksum(packet: bytes, version: int) -> bytes:
    """What the kernel hands over with TSO/CHECKSUM_PARTIAL: the pseudo-header sum, folded, not inverted."""
    buf = bytearray(packet)
    t = 20 if version == 4 else 40
    addresses = packet[12:20] if version == 4 else packet[8:40]
    total = reference_sum(addresses) + 6 + len(packet) - t
    struct.pack_into(">H", buf, t + 16, offload._fold(total))
    return bytes(buf)


def tso_frame(version: int, payload: bytes, mss: int, **kw: object) -> memoryview:
    packet = partial_checksum(tcp_packet(version, payload, **kw), version)
    t = 20 if version == 4 else 40
    hlen = t + (packet[t + 12] >> 4) * 4
    gso = GSO_TCPV4 if version == 4 else GSO_TCPV6
    return memoryview(VNET_HDR.pack(NEEDS_CSUM, gso, hlen, mss, t, 16) + packet)


def parse(packet: bytes, version: int):
    return IP(packet) if version == 4 else IPv6(packet)


def checksums_valid(packet: bytes, version: int) -> bool:
    """Rebuild the packet with scapy computing the checksums, and compare."""
    parsed = parse(packet, version)
    if version == 4:
        del parsed[IP].chksum
    del parsed[TCP].chksum
    return bytes(parsed) == packet


@given(st.binary(max_size=3000))
def test_ones_sum_is_rfc1071(data: bytes) -> None:
    assert ones_sum(data) % 0xFFFF == reference_sum(data) % 0xFFFF


@given(st.binary(min_size=1, max_size=200))
def test_checksum_verifies(data: bytes) -> None:
    even = data + b"\0" * (len(data) % 2)
    field = checksum(ones_sum(even))
    assert reference_sum(even + struct.pack(">H", field)) in (0xFFFF, 0) or not any(even)


@pytest.mark.parametrize("version", [4, 6])
def test_split_cuts_like_tso(version: int, payload_sums: str) -> None:
    mss = 1368
    payload = bytes(range(256)) * 200 + b"tail"  # 51204 bytes: 37 full segments and a short one
    frame = tso_frame(version, payload, mss, flags="PA", seq=0xFFFFF000)  # seq wraps on the way
    segments = split_frame(frame)
    assert len(segments) == -(-len(payload) // mss)
    seen = b""
    for i, segment in enumerate(segments):
        assert checksums_valid(segment, version), f"segment {i}"
        parsed = parse(segment, version)
        tcp = parsed[TCP]
        assert tcp.seq == (0xFFFFF000 + i * mss) & 0xFFFFFFFF
        assert str(tcp.flags) == ("PA" if i == len(segments) - 1 else "A")
        assert tcp.options == [("NOP", None), ("NOP", None), ("Timestamp", (12345, 678))]
        if version == 4:
            assert parsed[IP].id == 100 + i and parsed[IP].len == len(segment)
        else:
            assert parsed[IPv6].plen == len(segment) - 40
        seen += bytes(tcp.payload)
    assert seen == payload


def test_split_keeps_cwr_on_first_and_fin_on_last() -> None:
    frame = tso_frame(4, b"x" * 3000, 1000, flags="FPAC")
    flags = [str(IP(s)[TCP].flags) for s in split_frame(frame)]
    assert flags == ["AC", "A", "FPA"]


@pytest.mark.parametrize("offset, proto", [(16, "tcp"), (6, "udp")])
def test_split_completes_partial_checksum(offset: int, proto: str) -> None:
    l4 = TCP(sport=1, dport=2, flags="S") if proto == "tcp" else UDP(sport=1, dport=2)
    good = bytes(IP(src=SRC4, dst=DST4) / l4 / Raw(b"hello!?"))
    total = reference_sum(good[12:20]) + (6 if proto == "tcp" else 17) + len(good) - 20
    partial = bytearray(good)
    struct.pack_into(">H", partial, 20 + offset, offload._fold(total))
    frame = VNET_HDR.pack(NEEDS_CSUM, GSO_NONE, 0, 0, 20, offset) + partial
    assert split_frame(memoryview(frame)) == [good]


def test_split_passes_plain_packets_and_refuses_nonsense() -> None:
    packet = bytes(IP(src=SRC4, dst=DST4) / UDP() / Raw(b"x"))
    assert split_frame(memoryview(PLAIN_VNET_HDR + packet)) == [packet]
    assert split_frame(memoryview(b"short")) == []
    # UDP fragmentation offload was never offered: such a frame is dropped, not misparsed.
    assert split_frame(memoryview(VNET_HDR.pack(NEEDS_CSUM, 3, 28, 100, 20, 6) + packet)) == []
    # TSO claims on a packet that is not TCP, or a TCP offset past the end.
    assert split_frame(memoryview(VNET_HDR.pack(NEEDS_CSUM, GSO_TCPV4, 40, 100, 20, 16) + packet)) == []
    tcp = tcp_packet(4, b"y" * 100)
    assert split_frame(memoryview(VNET_HDR.pack(NEEDS_CSUM, GSO_TCPV4, 40, 10, 90, 16) + tcp)) == []


def unpack_frame(frame: list) -> tuple[tuple[int, ...], bytes]:
    data = b"".join(bytes(piece) for piece in frame)
    return VNET_HDR.unpack_from(data), data[VNET_HDR_SIZE:]


@pytest.mark.parametrize("version", [4, 6])
def test_coalesce_glues_what_split_cut(version: int) -> None:
    payload = bytes(range(251)) * 100
    segments = split_frame(tso_frame(version, payload, 1368, flags="PA"))
    frames = coalesce(segments)
    assert len(frames) == 1
    (flags, gso, hlen, gso_size, start, offset), packet = unpack_frame(frames[0])
    t = 20 if version == 4 else 40
    assert (flags, gso, gso_size, start, offset) == (NEEDS_CSUM, GSO_TCPV4 if version == 4 else GSO_TCPV6, 1368, t, 16)
    assert hlen == t + 32
    parsed = parse(packet, version)
    assert bytes(parsed[TCP].payload) == payload
    assert str(parsed[TCP].flags) == "PA" and parsed[TCP].seq == 1000
    if version == 4:
        assert parsed[IP].len == len(packet)
        ip_header = bytearray(packet[:20])
        assert reference_sum(bytes(ip_header)) == 0xFFFF  # valid IPv4 header checksum
    # The TCP field holds the pseudo-header sum for the kernel to finish.
    assert packet[t + 16 : t + 18] == partial_checksum(packet, version)[t + 16 : t + 18]


def test_coalesce_keeps_order_and_leaves_the_rest_alone() -> None:
    seg = [tcp_packet(4, b"a" * 100, seq=1000 + 100 * i) for i in range(6)]
    other_flow = tcp_packet(4, b"b" * 100, seq=1200, sport=40001)
    syn = tcp_packet(4, b"", flags="S")
    udp = bytes(IP(src=SRC4, dst=DST4) / UDP() / Raw(b"u"))
    gap = tcp_packet(4, b"c" * 100, seq=5000)
    packets = [seg[0], seg[1], other_flow, seg[2], syn, udp, seg[3], seg[4], gap, seg[5]]
    frames = coalesce(packets)
    sizes = []
    for frame in frames:
        header, packet = unpack_frame(frame)
        sizes.append((header[1], len(packet)))
    # seg0+seg1 glued; other flow alone; seg2 alone (it follows a different flow's run); SYN, UDP alone;
    # seg3+seg4 glued; the gap breaks the run; seg5 does not follow the gap.
    assert [gso for gso, _ in sizes] == [GSO_TCPV4, 0, 0, 0, 0, GSO_TCPV4, 0, 0]
    glued = b"".join(bytes(IP(unpack_frame(f)[1])[TCP].payload) for f in frames if unpack_frame(f)[0][1])
    assert glued == b"a" * 400


def test_coalesce_stops_after_short_or_pushed_segment() -> None:
    short = [tcp_packet(4, b"a" * 100, seq=0), tcp_packet(4, b"a" * 50, seq=100), tcp_packet(4, b"a" * 100, seq=150)]
    assert [unpack_frame(f)[0][1] for f in coalesce(short)] == [GSO_TCPV4, 0]
    pushed = [tcp_packet(4, b"a" * 100, seq=0, flags="PA"), tcp_packet(4, b"a" * 100, seq=100)]
    assert [unpack_frame(f)[0][1] for f in coalesce(pushed)] == [0, 0]
    different_ack = [tcp_packet(4, b"a" * 100, seq=0), tcp_packet(4, b"a" * 100, seq=100, ack=8)]
    assert len(coalesce(different_ack)) == 2


@settings(max_examples=60, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    size=st.integers(min_value=1, max_value=20000),
    mss=st.integers(min_value=8, max_value=1500),
    pure=st.booleans(),
)
def test_split_then_coalesce_round_trips(version: int, size: int, mss: int, pure: bool) -> None:
    payload = bytes((i * 7) & 0xFF for i in range(size))
    saved = offload._np
    if pure:
        offload._np = None
    try:
        segments = split_frame(tso_frame(version, payload, mss))
    finally:
        offload._np = saved
    assert all(checksums_valid(s, version) for s in segments)
    glued = b""
    for frame in coalesce(segments):
        glued += bytes(parse(unpack_frame(frame)[1], version)[TCP].payload)
    assert glued == payload


def _corrupt(packet: bytes, offset: int) -> bytes:
    """Flip a bit after the checksum was computed: what a sender's bad RAM or NIC would do
    before encrypting (the AEAD then vouches for the bad bytes)."""
    buf = bytearray(packet)
    buf[offset] ^= 0x10
    return bytes(buf)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("bad", [0, 2, 3])  # the first, a middle and the (short) last segment
def test_coalesce_never_glues_a_segment_with_a_bad_checksum(version: int, bad: int, payload_sums: str) -> None:
    # Finding 5: a corrupted segment was merged into a NEEDS_CSUM frame, which the kernel
    # accepts without checking. It must reach the kernel on its own, with no offload flag.
    sizes = [1368, 1368, 1368, 700]
    seqs = [1000 + sum(sizes[:i]) for i in range(4)]
    segments = [tcp_packet(version, bytes([i]) * size, seq=seq) for i, (size, seq) in enumerate(zip(sizes, seqs))]
    segments[bad] = _corrupt(segments[bad], len(segments[bad]) - 100)
    assert not checksums_valid(segments[bad], version)
    frames = [unpack_frame(f) for f in coalesce(segments)]
    for (flags, gso, *_), packet in frames:
        if bytes(packet) == segments[bad]:
            assert (flags, gso) == (0, GSO_NONE)  # the kernel checks it and drops it
        else:
            assert bytes(parse(packet, version)[TCP].payload)[:1] != bytes([bad])
    assert sum(bytes(packet) == segments[bad] for _, packet in frames) == 1


def test_coalesce_never_glues_a_segment_with_a_bad_ipv4_header_checksum(payload_sums: str) -> None:
    segments = [tcp_packet(4, b"x" * 1368, seq=1000 + 1368 * i) for i in range(3)]
    segments[1] = _corrupt(segments[1], 11)  # the header checksum field; the TCP checksum holds
    assert [unpack_frame(f)[0][:2] for f in coalesce(segments)] == [(0, GSO_NONE)] * 3


def _frames_bytes(frames: list) -> list[bytes]:
    return [b"".join(bytes(piece) for piece in frame) for frame in frames]


@settings(max_examples=80, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    count=st.integers(min_value=3, max_value=70),
    mss=st.sampled_from([500, 1368, 1388]),
    short_last=st.booleans(),
    mutation=st.sampled_from([None, "seq", "flags", "ttl", "port", "payload", "length", "ack", "push_middle"]),
    where=st.integers(min_value=0, max_value=69),
)
def test_whole_run_fast_path_agrees_with_packet_by_packet(
    version: int, count: int, mss: int, short_last: bool, mutation: str | None, where: int
) -> None:
    # The numpy recognition of a whole run must give exactly the frames the general loop gives,
    # for genuine runs and for runs broken in one place.
    sizes = [mss] * count
    if short_last:
        sizes[-1] = mss // 2
    seqs = [1000 + sum(sizes[:i]) for i in range(count)]
    segments = [tcp_packet(version, bytes([i % 251]) * size, seq=seq) for i, (size, seq) in enumerate(zip(sizes, seqs))]
    i = where % count
    if mutation == "seq":
        segments[i] = tcp_packet(version, bytes([i % 251]) * sizes[i], seq=seqs[i] + 1)
    elif mutation == "flags":
        segments[i] = tcp_packet(version, bytes([i % 251]) * sizes[i], seq=seqs[i], flags="PA")
    elif mutation == "push_middle":
        segments[count // 2] = tcp_packet(version, bytes([1]) * sizes[count // 2], seq=seqs[count // 2], flags="PA")
    elif mutation == "port":
        segments[i] = tcp_packet(version, bytes([i % 251]) * sizes[i], seq=seqs[i], sport=40001)
    elif mutation == "ack":
        segments[i] = tcp_packet(version, bytes([i % 251]) * sizes[i], seq=seqs[i], ack=8)
    elif mutation == "ttl" and version == 4:
        segments[i] = _with_ttl(segments[i], 63)
    elif mutation == "payload":
        segments[i] = _corrupt(segments[i], len(segments[i]) - 1)
    elif mutation == "length":
        segments[i] = tcp_packet(version, bytes([i % 251]) * (sizes[i] - 4), seq=seqs[i])
    if mutation is None and count <= 64 and len(segments[0]) - sizes[0] + sum(sizes) <= 65535:
        assert offload._whole_run(segments) is not None  # the fast path is what is being judged
    fast = coalesce(segments)
    saved = offload._whole_run
    offload._whole_run = lambda packets: None
    try:
        general = coalesce(segments)
    finally:
        offload._whole_run = saved
    assert _frames_bytes(fast) == _frames_bytes(general)


def _with_ttl(packet: bytes, ttl: int) -> bytes:
    parsed = IP(packet)
    parsed.ttl = ttl
    del parsed.chksum
    return bytes(parsed)


@settings(max_examples=60, deadline=None)
@given(version=st.sampled_from([4, 6]), size=st.integers(min_value=1, max_value=20000),
       mss=st.integers(min_value=8, max_value=1500), flags=st.sampled_from(["A", "PA", "FPA", "CA", "CPA"]),
       ip_id=st.integers(0, 65535), seq=st.integers(0, 2**32 - 1))
def test_split_with_numpy_sums_cuts_exactly_as_without(version: int, size: int, mss: int, flags: str, ip_id: int,
                                                   seq: int) -> None:
    frame = tso_frame(version, bytes((i * 13) & 0xFF for i in range(size)), mss, flags=flags, ip_id=ip_id, seq=seq)
    with_numpy = split_frame(frame)
    saved = offload._np
    offload._np = None
    try:
        by_loop = split_frame(frame)
    finally:
        offload._np = saved
    assert with_numpy == by_loop
