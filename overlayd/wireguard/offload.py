"""TCP segmentation and coalescing for a TUN device with virtio-net headers (pure functions).

Read side (`split_frame`): the kernel hands us TCP super-packets of up to 64 KiB (TSO) and
packets whose checksum it left to us (partial checksum); we cut the former into MSS-sized
segments with their own headers and checksums, and complete the latter, as a NIC would.
Write side (`coalesce`): consecutive in-order full-size TCP segments of one flow are glued
back into one super-packet (GRO) so the kernel's stack and the reader handle 64 KiB at once;
as wireguard-go does, only segments whose checksums hold are glued (a glued frame carries a
partial checksum, which the kernel does not verify).

Checksums are RFC 1071 sums done on big integers: 2**16 = 1 (mod 0xFFFF), so the one's
complement sum of 16-bit words is the buffer read as one number, mod 0xFFFF. With numpy
present, the payload sums of all segments of a super-packet are taken in one call.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

try:  # optional accelerator, see _payload_sums
    import numpy as _np
except ImportError:  # pragma: no cover - depends on the host
    _np = None

VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_SIZE = VNET_HDR.size
NEEDS_CSUM = 0x01
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_ECN = 0x80
PLAIN_VNET_HDR = bytes(VNET_HDR_SIZE)

TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_CWR = 0x80
PROTO_TCP = 6
PROTO_UDP = 17
UDP_CHECKSUM_OFFSET = 6
TCP_CHECKSUM_OFFSET = 16
MAX_COALESCED_SEGMENTS = 64
MAX_IP_LENGTH = 65535

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_LENGTH_AND_ID = struct.Struct(">HH")
_TCP_FIELDS = struct.Struct(">IIHHH")  # seq, ack, data offset + flags, window, checksum
_IPV4_FIELDS = struct.Struct(">HHIH")  # total length, ID, flags + fragment + TTL + protocol, checksum

Buffer = bytes | bytearray | memoryview  # events.Packet


def ones_sum(data: Buffer) -> int:
    """One's complement sum of big-endian 16-bit words, as a residue mod 0xFFFF (odd tail padded)."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return value % 0xFFFF


def checksum(total: int) -> int:
    """The Internet checksum field for a sum of word sums (inverted one's complement)."""
    s = total % 0xFFFF
    return 0xFFFF - s if s else 0


def _fold(total: int) -> int:
    """The folded sum, not inverted: what a partial checksum field holds (never 0 for data)."""
    return total % 0xFFFF or 0xFFFF


def _payload_sums(payload: memoryview, mss: int, count: int) -> list[int]:
    """ones_sum of each of the first `count` mss-byte pieces of `payload`."""
    if _np is not None and count > 1 and mss % 4 == 0:
        # Little-endian 32-bit words: each is two LE 16-bit words mod 0xFFFF, and a byte swap
        # is a multiplication by 256 mod 0xFFFF, so the big-endian sum is 256 * the LE sum.
        words = _np.frombuffer(payload, dtype="<u4", count=count * mss // 4).reshape(count, mss // 4)
        return [(int(s) << 8) % 0xFFFF for s in words.sum(axis=1, dtype=_np.uint64).tolist()]
    return [ones_sum(payload[i * mss : (i + 1) * mss]) for i in range(count)]


def split_frame(frame: memoryview) -> list[Buffer]:
    """The IP packets in one frame read from the TUN device (virtio-net header first).

    Frames the kernel should never produce (unknown GSO types, impossible offsets) give [].
    """
    if len(frame) <= VNET_HDR_SIZE:
        return []
    flags, gso_type, _, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(frame)
    packet = frame[VNET_HDR_SIZE:]
    kind = gso_type & ~GSO_ECN
    if kind == GSO_NONE:
        if flags & NEEDS_CSUM:
            completed = complete_checksum(packet, csum_start, csum_offset)
            return [completed] if completed is not None else []
        return [bytes(packet)]
    if kind in (GSO_TCPV4, GSO_TCPV6) and gso_size > 0:
        return split_tcp(packet, csum_start, gso_size)
    return []


def complete_checksum(packet: memoryview, start: int, offset: int) -> bytes | None:
    """Fill in a partial checksum: the field holds the pseudo-header sum, add the rest."""
    field = start + offset
    if field + 2 > len(packet):
        return None
    buf = bytearray(packet)
    value = checksum(ones_sum(memoryview(buf)[start:]))
    if value == 0 and offset == UDP_CHECKSUM_OFFSET:
        value = 0xFFFF  # 0 means "no checksum" in UDP
    _U16.pack_into(buf, field, value)
    return bytes(buf)


def split_tcp(packet: memoryview, tcp_offset: int, mss: int) -> list[Buffer]:
    """Cut a TCP super-packet into segments of `mss` payload bytes, as the kernel's TSO would:
    sequence numbers advance, IPv4 IDs count up, CWR stays on the first segment and FIN/PSH
    on the last, and every segment gets its IP and TCP checksums.

    The hot loop only adds what changes per segment (sequence number, IPv4 ID, payload sum)
    to sums taken once per super-packet, and writes each header with two struct packs.
    """
    n = len(packet)
    version = packet[0] >> 4
    t = tcp_offset
    if version == 4:
        if (packet[0] & 0x0F) * 4 != t or t < 20 or packet[9] != PROTO_TCP:
            return []
        addresses = packet[12:20]
    elif version == 6:
        if t < 40:
            return []
        addresses = packet[8:40]
    else:
        return []
    if t + 20 > n:
        return []
    hlen = t + (packet[t + 12] >> 4) * 4
    if hlen < t + 20 or hlen >= n:
        return []
    header = bytearray(packet[:hlen])
    seq, ack, doff_flags, window, _ = _TCP_FIELDS.unpack_from(header, t + 4)
    flags = doff_flags & 0xFF
    size = n - hlen
    payload = packet[hlen:]
    full = size // mss
    sums = _payload_sums(payload, mss, full)
    if size % mss:
        sums.append(ones_sum(payload[full * mss :]))
    last = len(sums) - 1

    # TCP: pseudo-header (addresses, protocol, length) + header with zero seq and checksum.
    _TCP_FIELDS.pack_into(header, t + 4, 0, ack, doff_flags & 0xFF00, window, 0)
    tcp_base = ones_sum(addresses) + PROTO_TCP + hlen - t + ones_sum(memoryview(header)[t:])
    if version == 4:
        ip_id = _U16.unpack_from(header, 4)[0]
        # IPv4: header with zero length, ID and checksum; the rest is constant.
        _LENGTH_AND_ID.pack_into(header, 2, 0, 0)
        header[10] = header[11] = 0
        ip_base = ones_sum(memoryview(header)[:t]) + hlen
        frag_ttl_proto = _U32.unpack_from(header, 6)[0]
    out: list[Buffer] = []
    for i, payload_sum in enumerate(sums):
        start = i * mss
        length = mss if i < last else size - start
        segment_flags = flags
        if i:
            segment_flags &= ~TCP_CWR
        if i < last:
            segment_flags &= ~(TCP_FIN | TCP_PSH)
        segment_seq = (seq + start) & 0xFFFFFFFF
        tcp_sum = tcp_base + length + (segment_seq >> 16) + (segment_seq & 0xFFFF) + segment_flags + payload_sum
        _TCP_FIELDS.pack_into(
            header, t + 4, segment_seq, ack, (doff_flags & 0xFF00) | segment_flags, window, checksum(tcp_sum)
        )
        if version == 4:
            segment_id = (ip_id + i) & 0xFFFF
            _IPV4_FIELDS.pack_into(
                header, 2, hlen + length, segment_id, frag_ttl_proto, checksum(ip_base + length + segment_id)
            )
        else:
            _U16.pack_into(header, 4, hlen - 40 + length)
        out.append(b"".join((header, payload[start : start + length])))
    return out


def _same_flow(p: bytes, f: bytes, t: int, hlen: int) -> bool:
    """Whether segment `p` may follow `f` in one super-packet: same addresses, ports, ack and
    options (the kernel's GRO rules), and for IPv4 the same TOS, DF and TTL, for IPv6 the same
    traffic class, flow label and hop limit. Lengths, IDs, sequence numbers, window and
    checksums may differ."""
    if t == 20:
        return (
            p[12:24] == f[12:24] and p[28:32] == f[28:32] and p[38:hlen] == f[38:hlen]
            and p[1] == f[1] and p[6] == f[6] and p[8] == f[8]
        )
    return p[8:44] == f[8:44] and p[48:52] == f[48:52] and p[58:hlen] == f[58:hlen] and p[:4] == f[:4] and p[7] == f[7]


def _run_frames(run: list[bytes], t: int, hlen: int, length: int) -> list[list[Buffer]]:
    """One GSO frame from segments that passed the checks in `coalesce`, if their checksums
    hold; else each as it came, for the kernel to check (and drop the bad one)."""
    if len(run) == 1 or not _checksums_valid(run, t):
        return [[PLAIN_VNET_HDR, p] for p in run]
    return [_merged_frame(run[0], run[-1], t, hlen, length, [memoryview(p)[hlen:] for p in run])]


def _merged_frame(first: bytes, last: bytes, t: int, hlen: int, length: int, payloads: list[Buffer]) -> list[Buffer]:
    """The GSO frame of a checked run: the first segment's header (with the last one's PSH and
    window, the total length and a partial checksum), then the payloads."""
    header = bytearray(first[:hlen])
    header[t + 13] |= last[t + 13] & TCP_PSH
    header[t + 14 : t + 16] = last[t + 14 : t + 16]  # the newest window
    if t == 20:
        _U16.pack_into(header, 2, length)
        header[10] = header[11] = 0
        _U16.pack_into(header, 10, checksum(ones_sum(header[:20])))
        addresses = header[12:20]
        gso = GSO_TCPV4
    else:
        _U16.pack_into(header, 4, length - 40)
        addresses = header[8:40]
        gso = GSO_TCPV6
    # A partial checksum: the kernel trusts it on local delivery and completes it if it
    # forwards the packet, so each segment's own checksum was checked first. (The AEAD proves
    # who sent the bytes, not that they were intact before the peer encrypted them.)
    _U16.pack_into(header, t + 16, _fold(ones_sum(addresses) + PROTO_TCP + length - t))
    vnet = VNET_HDR.pack(NEEDS_CSUM, gso, hlen, len(first) - hlen, t, TCP_CHECKSUM_OFFSET)
    return [vnet, header, *payloads]


def _checksums_valid(run: Sequence[bytes], t: int) -> bool:
    """Whether every segment of a run (TCP over IPv4 without options if t == 20, else over
    IPv6) carries a valid TCP checksum and, for IPv4, a valid header checksum: what the kernel
    checks before it merges, and what it cannot check in a NEEDS_CSUM frame. The full-size
    segments (all but maybe the last) are summed in one numpy call when their length divides
    by 4; the rest one by one."""
    n = len(run[0])
    full = run if len(run[-1]) == n else run[:-1]
    if _np is None or len(full) < 2 or n % 4:
        return all(_checksum_valid(p, t) for p in run)
    rows = _np.frombuffer(b"".join(full), dtype=_np.uint8).reshape(len(full), n)
    return _rows_checksums_valid(rows, t) and (full is run or _checksum_valid(run[-1], t))


def _rows_checksums_valid(rows: "_np.ndarray", t: int) -> bool:
    """_checksums_valid for equal-size packets, one per row of a uint8 array (width % 4 == 0).
    A valid sum is 0xFFFF, 0 as a residue; as in _payload_sums, little-endian 32-bit words
    summed and times 256 give the big-endian 16-bit sum mod 0xFFFF."""
    words = rows.view("<u4")
    totals = words.sum(axis=1, dtype=_np.uint64)
    headers = words[:, : t // 4].sum(axis=1, dtype=_np.uint64)
    addresses = (words[:, 3:5] if t == 20 else words[:, 2:10]).sum(axis=1, dtype=_np.uint64)
    if t == 20 and ((headers << 8) % 0xFFFF).any():
        return False
    return not ((((totals - headers + addresses) << 8) + (PROTO_TCP + rows.shape[1] - t)) % 0xFFFF).any()


def _checksum_valid(p: bytes, t: int) -> bool:
    if t == 20 and ones_sum(p[:20]):
        return False
    addresses = p[12:20] if t == 20 else p[8:40]
    return (ones_sum(addresses) + PROTO_TCP + len(p) - t + ones_sum(memoryview(p)[t:])) % 0xFFFF == 0


# Header bytes in which the segments of one run may differ (IPv4 without options: ID and
# header checksum, then for both: sequence number, window, TCP checksum); every other header
# byte must be the first segment's (what _same_flow and the candidate checks say, and more).
_MAY_DIFFER = {20: frozenset((4, 5, 10, 11, 24, 25, 26, 27, 34, 35, 36, 37)),
               40: frozenset((44, 45, 46, 47, 54, 55, 56, 57))}
# The same for the last segment, which may also be shorter and carry PSH: the spans of the
# fixed TCP/IP header it must share, then the options from _OPTIONS on.
_SAME_IN_LAST = {20: ((0, 2), (6, 10), (12, 24), (28, 33)), 40: ((0, 4), (6, 44), (48, 53))}
_OPTIONS = {20: 38, 40: 58}  # from the urgent pointer on


def _whole_run(packets: Sequence[bytes]) -> list[Buffer] | None:
    """The one GSO frame `coalesce` would make if `packets` are exactly one run under its rules
    (checksums included), checked with numpy over all but the last segment (which may be
    shorter) at once. None whenever anything differs: coalesce then goes packet by packet,
    so this only has to be right when it says yes."""
    first, last = packets[0], packets[-1]
    n, k = len(first), len(packets)
    if _np is None or k > MAX_COALESCED_SEGMENTS or n < 60 or n % 4 or len(last) > n:
        return None
    if first[0] == 0x45 and first[9] == PROTO_TCP and not (first[6] & 0xBF or first[7]):
        t = 20
    elif first[0] >> 4 == 6 and first[6] == PROTO_TCP:
        t = 40
    else:
        return None
    hlen = t + (first[t + 12] >> 4) * 4
    mss = n - hlen
    length = n + (k - 2) * mss + len(last) - hlen
    if first[t + 13] != TCP_ACK or hlen < t + 20 or mss <= 0 or length > MAX_IP_LENGTH:
        return None
    full = packets[:-1]
    if any(len(p) != n for p in full):
        return None
    rows = _np.frombuffer(b"".join(full), dtype=_np.uint8).reshape(k - 1, n)
    differ = _np.flatnonzero((rows[1:, :hlen] != rows[0, :hlen]).any(axis=0)).tolist()
    if not _MAY_DIFFER[t].issuperset(differ):
        return None
    seq = rows[:, t + 4 : t + 8].astype(_np.int64) @ _np.array([1 << 24, 1 << 16, 1 << 8, 1])
    seq0 = int(seq[0])
    if ((seq - seq0) % (1 << 32) != _np.arange(k - 1) * mss).any():
        return None
    if (
        len(last) <= hlen or last[t + 13] & ~TCP_PSH != TCP_ACK
        or _U32.unpack_from(last, t + 4)[0] != (seq0 + (k - 1) * mss) & 0xFFFFFFFF
        or any(last[i:j] != first[i:j] for i, j in _SAME_IN_LAST[t])
        or last[_OPTIONS[t] : hlen] != first[_OPTIONS[t] : hlen]
    ):
        return None
    if not _rows_checksums_valid(rows, t) or not _checksum_valid(last, t):
        return None
    return _merged_frame(first, last, t, hlen, length, [rows[:, hlen:].tobytes(), memoryview(last)[hlen:]])


def coalesce(packets: Sequence[bytes]) -> list[list[Buffer]]:
    """Frames to write to the TUN device, each as a list of buffers for writev.

    Consecutive in-order data segments of one TCP flow (plain ACK, PSH only on the last, all
    but the last of the first one's size) become one GSO frame; everything else goes out as
    it came behind an empty virtio-net header. Order is kept. A batch that is one such run
    (the usual case for a GRO receive) is recognised in one numpy pass.
    """
    if len(packets) > 2:
        whole = _whole_run(packets)
        if whole is not None:
            return [whole]
    frames: list[list[Buffer]] = []
    run: list[bytes] = []
    t = hlen = mss = length = next_seq = 0
    closed = True
    unpack_u32 = _U32.unpack_from
    for p in packets:
        n = len(p)
        if n >= 40 and p[0] == 0x45 and p[9] == PROTO_TCP and not (p[6] & 0xBF or p[7]):
            pt = 20  # IPv4 without options, not a fragment
        elif n >= 60 and p[0] >> 4 == 6 and p[6] == PROTO_TCP:
            pt = 40
        else:
            pt = 0
        if pt:
            ph = pt + (p[pt + 12] >> 4) * 4
            if p[pt + 13] & ~TCP_PSH != TCP_ACK or ph < pt + 20 or ph >= n:
                pt = 0
        if not pt:
            if run:
                frames += _run_frames(run, t, hlen, length)
                run = []
            frames.append([PLAIN_VNET_HDR, p])
            continue
        seq = unpack_u32(p, pt + 4)[0]
        size = n - ph
        if (
            run and not closed and seq == next_seq and ph == hlen and pt == t and size <= mss
            and length + size <= MAX_IP_LENGTH and len(run) < MAX_COALESCED_SEGMENTS
            and _same_flow(p, run[0], t, hlen)
        ):
            run.append(p)
            length += size
        else:
            if run:
                frames += _run_frames(run, t, hlen, length)
            run = [p]
            t, hlen, mss, length = pt, ph, size, n
        next_seq = (seq + size) & 0xFFFFFFFF
        # PSH ends a run, and so does a short segment (only the last may be short).
        closed = p[pt + 13] & TCP_PSH != 0 or size < mss
    if run:
        frames += _run_frames(run, t, hlen, length)
    return frames
