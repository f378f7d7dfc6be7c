"""The transport-data hot loops: sealing packets into datagrams and opening datagrams, per
packet or per batch. Pure functions over a Keypair; the Device does the bookkeeping.

Batched forms exist because the per-packet Python around each AEAD call cost more than the
AEAD itself: a batch is sealed into one buffer that leaves in one GSO send (no object per
datagram), and a GRO receive is opened with one header pass and one replay-window update.
"""

import collections
import functools
import struct
from collections.abc import Callable, Iterable, Sequence

from cryptography.exceptions import InvalidTag

from overlayd.wireguard.constants import (
    MESSAGE_TRANSPORT, PADDING_MULTIPLE, REJECT_AFTER_TIME, TAG_SIZE, TRANSPORT_HEADER_SIZE,
)
from overlayd.wireguard.crypto import counter_nonce
from overlayd.wireguard.events import Datagram, DatagramBatch, DatagramSink, DropReason, Endpoint, Packet
from overlayd.wireguard.ippacket import source_and_length_untrusted
from overlayd.wireguard.keypair import Keypair
from overlayd.wireguard.messages import TRANSPORT_HEADER

OVERHEAD = TRANSPORT_HEADER_SIZE + TAG_SIZE
MAX_BATCH_SEGMENTS = 64  # the kernel's limits for one UDP GSO send
MAX_BATCH_BYTES = 65507
_ZEROS = bytes(PADDING_MULTIPLE)
_PAD_MASK = ~(PADDING_MULTIPLE - 1)


def padded_size(n: int, mtu: int) -> int:
    """Plaintext length on the wire: a multiple of 16, but never padded past the MTU."""
    padded = (n + PADDING_MULTIPLE - 1) & _PAD_MASK
    return max(n, mtu) if padded > mtu else padded


def seal_each(keypair: Keypair, packets: Iterable[Packet], mtu: int, endpoint: Endpoint,
              out: DatagramSink) -> tuple[int, bool]:
    """One Datagram per packet. Returns (bytes sent, whether any was data, not a keepalive)."""
    seal = keypair.send.encrypt_into
    pack_header = TRANSPORT_HEADER.pack_into
    remote = keypair.remote_index
    counter = keypair.send_counter
    sent_bytes = 0
    sent_data = False
    for packet in packets:
        n = len(packet)
        padded = padded_size(n, mtu)
        if padded != n:
            packet = bytes(packet) + _ZEROS[: padded - n]
        buf = bytearray(padded + OVERHEAD)
        pack_header(buf, 0, MESSAGE_TRANSPORT, remote, counter)
        seal(counter_nonce(counter), packet, None, memoryview(buf)[TRANSPORT_HEADER_SIZE:])
        counter += 1
        sent_bytes += len(buf)
        sent_data = sent_data or n > 0
        out.append(Datagram(buf, endpoint))
    keypair.send_counter = counter
    return sent_bytes, sent_data


def seal_batched(keypair: Keypair, packets: Sequence[Packet], mtu: int, endpoint: Endpoint,
                 out: DatagramSink) -> tuple[int, bool]:
    """Datagrams back to back in one buffer, cut into GSO sends (DatagramBatch): equal sizes,
    a shorter one may end a batch, at most 64 datagrams and 65,507 bytes each."""
    sizes = []
    for p in packets:  # padded_size, inlined: this runs for every segment
        n = len(p)
        padded = (n + PADDING_MULTIPLE - 1) & _PAD_MASK
        sizes.append((max(n, mtu) if padded > mtu else padded) + OVERHEAD)
    buf = bytearray(sum(sizes))
    view = memoryview(buf)
    seal = keypair.send.encrypt_into
    nonce = counter_nonce
    pack_header = TRANSPORT_HEADER.pack_into
    remote = keypair.remote_index
    counter = keypair.send_counter
    sent_data = False
    offset = start = count = size = 0  # the open batch: buf[start:offset], `count` of `size`
    for packet, wire in zip(packets, sizes):
        if count and (wire > size or count == MAX_BATCH_SEGMENTS or offset + wire - start > MAX_BATCH_BYTES):
            out.append(DatagramBatch(view[start:offset], size, endpoint))
            count = 0
        if not count:
            start, size = offset, wire
        n = len(packet)
        if wire - OVERHEAD != n:
            packet = bytes(packet) + _ZEROS[: wire - OVERHEAD - n]
        pack_header(buf, offset, MESSAGE_TRANSPORT, remote, counter)
        seal(nonce(counter), packet, None, view[offset + TRANSPORT_HEADER_SIZE : offset + wire])
        counter += 1
        count += 1
        offset += wire
        sent_data = sent_data or n > 0
        if wire < size:  # a short one ends its batch
            out.append(DatagramBatch(view[start:offset], size, endpoint))
            count = 0
    if count:
        out.append(DatagramBatch(view[start:offset], size, endpoint))
    keypair.send_counter = counter
    return len(buf), sent_data


def batch_counters_untrusted(data: memoryview, size: int) -> tuple[int, list[int]] | None:
    """(receiver index, counters) if the datagrams of `size` bytes back to back in `data` (the
    last may be shorter, but not below a keepalive) are all transport messages to one receiver.
    All headers are read with one unpack (a format per batch shape, cached)."""
    n = len(data)
    if size < OVERHEAD or n < OVERHEAD or (n % size or size) < OVERHEAD:
        return None
    count = -(-n // size)
    headers = _headers_format(size, count).unpack_from(data)
    receiver = headers[1]
    if headers[0::3].count(MESSAGE_TRANSPORT) != count or headers[1::3].count(receiver) != count:
        return None
    return receiver, list(headers[2::3])


@functools.lru_cache(maxsize=64)
def _headers_format(size: int, count: int) -> struct.Struct:
    """Type, receiver and counter of `count` transport messages `size` bytes apart."""
    return struct.Struct("<" + f"IIQ{size - TRANSPORT_HEADER_SIZE}x" * (count - 1) + "IIQ")


def open_batch(keypair: Keypair, data: memoryview, size: int, counters: list[int]) -> tuple[list[bytes], int]:
    """Decrypt every datagram and record the authentic ones in the replay window. Returns the
    plaintexts that pass both (in order) and how many failed the AEAD; replays are the rest."""
    decrypt = keypair.receive.decrypt
    nonce = counter_nonce
    authentic: list[int] = []
    plaintexts: list[bytes] = []
    bad = 0
    for offset, counter in zip(range(0, len(data), size), counters):
        try:
            plaintext = decrypt(nonce(counter), data[offset + TRANSPORT_HEADER_SIZE : offset + size], None)
        except InvalidTag:
            bad += 1
            continue
        plaintexts.append(plaintext)
        authentic.append(counter)
    fresh = keypair.replay.accept_all(authentic)
    return [p for p, ok in zip(plaintexts, fresh) if ok], bad


def open_gro_batch(index: dict[int, Keypair], data: memoryview, size: int, now: float, shard: int, shards: int,
                   lookup: Callable[[bytes], object], drops: "collections.Counter[str]"
                   ) -> tuple[Keypair, list[bytes], int, int] | None:
    """Open one GRO receive (datagrams of `size` bytes back to back) if they are all transport
    messages for one live session that process `shard` owns: (keypair, inner packets for TUN,
    bytes on the wire, data packets) for the caller's bookkeeping. None, with nothing changed,
    sends the caller the one-by-one way. Failures are counted."""
    found = batch_counters_untrusted(data, size)
    if found is None:
        return None
    receiver, counters = found
    keypair = index.get(receiver)
    if keypair is None or now - keypair.created >= REJECT_AFTER_TIME or not owned_by(receiver, shard, shards):
        return None
    plaintexts, bad = open_batch(keypair, data, size, counters)
    if bad:
        drops[DropReason.BAD_AEAD] += bad
    if len(counters) - bad - len(plaintexts):
        drops[DropReason.REPLAY] += len(counters) - bad - len(plaintexts)
    if not plaintexts:
        return keypair, [], 0, 0
    packets = inner_packets(plaintexts, keypair.peer, lookup, drops)
    return (keypair, packets, sum(map(len, plaintexts)) + OVERHEAD * len(plaintexts),
            sum(1 for p in plaintexts if p))


def open_one(index: dict[int, Keypair], data: bytes | memoryview, now: float,
             drops: "collections.Counter[str]") -> tuple[Keypair, bytes] | None:
    """Open one transport message (at least TRANSPORT_MIN_SIZE bytes): find the session,
    decrypt, then (only once authenticated) check the replay window. Failures are counted."""
    _, receiver, counter = TRANSPORT_HEADER.unpack_from(data)
    keypair = index.get(receiver)
    if keypair is None:
        drops[DropReason.UNKNOWN_INDEX] += 1
        return None
    if now - keypair.created >= REJECT_AFTER_TIME:
        drops[DropReason.EXPIRED_KEY] += 1
        return None
    try:
        plaintext = keypair.receive.decrypt(counter_nonce(counter), memoryview(data)[TRANSPORT_HEADER_SIZE:], None)
    except InvalidTag:
        drops[DropReason.BAD_AEAD] += 1
        return None
    if not keypair.replay.accept(counter):
        drops[DropReason.REPLAY] += 1
        return None
    return keypair, plaintext


def inner_packets(plaintexts: list[bytes], owner: object, lookup: Callable[[bytes], object],
                  drops: "collections.Counter[str]") -> list[bytes]:
    """The decrypted packets that are IP and come from an address `owner` (the sending peer) is
    allowed, cut to their header length (padding off); keepalives (empty) are skipped."""
    packets = []
    # A packet with the same first 4 bytes (version, header length, total length), length
    # and source as one already let through is let through as that one was (the segments
    # of one TCP flow): two slice compares instead of parsing and looking up each.
    known_start = known_source = b""
    known_length = -1
    for plaintext in plaintexts:
        if not plaintext:
            continue  # a keepalive
        if len(plaintext) == known_length and plaintext[:4] == known_start:
            if plaintext[12:16] == known_source:
                packets.append(plaintext)
                continue
        header = source_and_length_untrusted(plaintext)
        if header is None:
            drops[DropReason.BAD_INNER_PACKET] += 1
            continue
        source, length = header
        if lookup(source) is not owner:
            drops[DropReason.NOT_ALLOWED_IP] += 1
            continue
        if length == len(plaintext) and plaintext[0] == 0x45:  # whole IPv4 packet, no options
            known_start, known_source, known_length = plaintext[:4], source, length
        packets.append(plaintext if length == len(plaintext) else plaintext[:length])
    return packets


def owned_by(receiver: int, shard: int, shards: int) -> bool:
    """Whether a session index belongs to worker `shard` of `shards` (steering.py sends a
    transport message to the worker named by its receiver index's lowest byte)."""
    return shards == 1 or (receiver & 0xFF) % shards == shard
