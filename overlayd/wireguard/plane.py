"""Worker processes' share of the data path: seal and open transport messages with sessions
the control process made (the Device), and tell it what they did.

The control process owns everything stateful in the protocol (handshakes, timers, key
rotation, configuration). After each change it sends every worker a PlaneSnapshot: peers with
their endpoint, allowed IPs and session keys; all of them the first time, then only the peers
that changed (a handshake is one peer, whatever the size of the mesh). Workers send back
WorkerReports: bytes and packets per session (for timers, roaming, key confirmation and `wg
show`), drop counts, packets they could not send (no session yet): the control stages
those and handshakes, and datagrams that reached the wrong process (below).

Steering reads only the first datagram of a GRO receive: a datagram forged with a peer's
address can take that peer's genuine datagrams of the same size to another process. That
process passes on the transport messages it does not own that come from a peer's own address
(anything else is junk, dropped as `misrouted`), at most FORWARD_LIMIT per FORWARD_INTERVAL:
a worker to the control in its report, the control to the owner (engine.py). The owner's
replay window judges them as it judges any datagram; being late, they move no endpoint.

Sans-I/O like the Device: a WorkerPlane has the Device's data path methods (seal_packets,
receive_batch_untrusted, receive_datagrams_untrusted), so one I/O loop (datapath.py) drives either.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from overlayd.wireguard import transport
from overlayd.wireguard.constants import (
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    TRANSPORT_MIN_SIZE,
)
from overlayd.wireguard.counters import CounterSpace
from overlayd.wireguard.events import Datagram, DatagramBatch, DropReason, Endpoint, Output, Packet, TunPacket
from overlayd.wireguard.ippacket import destination_untrusted
from overlayd.wireguard.keypair import Keypair
from overlayd.wireguard.messages import TRANSPORT_HEADER, TYPE
from overlayd.wireguard.routing import AllowedIPs, Network

PENDING_LIMIT = 256  # datagrams for a session the worker has not heard of yet
PENDING_SECONDS = 1.0
FORWARD_LIMIT = 256  # datagrams a process passes on per FORWARD_INTERVAL (a few GRO receives)
FORWARD_INTERVAL = 0.05  # seconds


@dataclass(frozen=True)
class SessionKeys:
    """One keypair as a worker needs it; `sends` marks the one to seal with (the current)."""

    local_index: int
    remote_index: int
    send_key: bytes = field(repr=False)
    receive_key: bytes = field(repr=False)
    created: float
    slot: int
    sends: bool


@dataclass(frozen=True)
class PeerPlane:
    public_key: bytes
    endpoint: Endpoint | None
    allowed_ips: tuple[Network, ...]
    sessions: tuple[SessionKeys, ...]


@dataclass(frozen=True)
class PlaneSnapshot:
    """`full`: `peers` are all the peers. Otherwise an update: `peers` changed (or are new),
    `removed` are gone, and every other peer stays as it was."""

    generation: int
    mtu: int
    peers: tuple[PeerPlane, ...]
    removed: tuple[bytes, ...] = ()
    full: bool = True


def merge(older: PlaneSnapshot, newer: PlaneSnapshot) -> PlaneSnapshot:
    """One snapshot with the effect of applying `older`, then `newer` (for a worker that has
    not read `older` yet)."""
    if newer.full:
        return newer
    peers = {p.public_key: p for p in older.peers}
    removed = dict.fromkeys(older.removed)
    for key in newer.removed:
        peers.pop(key, None)
        removed[key] = None
    for plane in newer.peers:
        peers[plane.public_key] = plane
        removed.pop(plane.public_key, None)  # its new sessions replace the old on the worker anyway
    return PlaneSnapshot(newer.generation, newer.mtu, tuple(peers.values()),
                         removed=() if older.full else tuple(removed), full=older.full)


class ForwardBudget:
    """At most FORWARD_LIMIT datagrams per FORWARD_INTERVAL are passed on to another process."""

    def __init__(self) -> None:
        self._start = -FORWARD_INTERVAL
        self._used = 0

    def take(self, now: float) -> bool:
        if now - self._start >= FORWARD_INTERVAL:
            self._start, self._used = now, 0
        if self._used >= FORWARD_LIMIT:
            return False
        self._used += 1
        return True


@dataclass
class WorkerReport:
    """What a worker did since its last report. `received`: local index -> [bytes, data
    packets, latest source or None, time of the latest]; `sent`: peer public key -> [bytes, whether
    any was data, time of the latest]. The times put sends and receives back in order for the
    timers (a ping answered: the keepalive timer, not a new handshake). `forwarded`: datagrams
    for another process (module docstring), with their source."""

    generation: int
    received: dict[int, list[Any]] = field(default_factory=dict)
    sent: dict[bytes, list[Any]] = field(default_factory=dict)
    drops: collections.Counter[str] = field(default_factory=collections.Counter)
    packets: list[bytes] = field(default_factory=list)
    forwarded: list[tuple[bytes, Endpoint]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.received or self.sent or self.drops or self.packets or self.forwarded)


class _Peer:
    __slots__ = ("public_key", "endpoint", "sender")

    def __init__(self, public_key: bytes, endpoint: Endpoint | None) -> None:
        self.public_key = public_key
        self.endpoint = endpoint
        self.sender: Keypair | None = None


class WorkerPlane:
    def __init__(self, shard: int, shards: int, counters: CounterSpace) -> None:
        self.shard = shard
        self.shards = shards
        self._counters = counters
        self.mtu = 1420
        self.generation = -1
        self.drops: collections.Counter[str] = collections.Counter()  # since the last report
        self._routes: AllowedIPs[_Peer] = AllowedIPs()
        self._peers: dict[bytes, _Peer] = {}
        self._sessions: dict[bytes, tuple[int, ...]] = {}  # a peer's local indices
        self._keypairs: dict[int, Keypair] = {}  # by local index: the sessions we may open
        self._report = WorkerReport(-1)
        self._pending: collections.deque[tuple[bytes, Endpoint, float]] = collections.deque()
        self._forward_budget = ForwardBudget()
        self._endpoints: set[Endpoint] | None = None  # the peers' endpoints, built when needed

    # From and to the control process.

    def apply(self, snapshot: PlaneSnapshot, now: float) -> list[Output]:
        """Take the control's state (all of it, or what changed). A keypair that stays keeps its
        replay window and lease. Returns what datagrams that waited for a session now give."""
        if snapshot.full:
            listed = {p.public_key for p in snapshot.peers}
            gone: Iterable[bytes] = [key for key in self._peers if key not in listed]
        else:
            gone = snapshot.removed
        for key in gone:
            peer = self._peers.pop(key, None)
            if peer is not None:
                self._routes.remove_owner(peer)
                self._forget_sessions(peer, keep=())
        for config in snapshot.peers:
            self._update_peer(config)
        keypairs = self._keypairs
        self._endpoints = None
        self.mtu = snapshot.mtu
        self.generation = self._report.generation = snapshot.generation
        if not self._pending:
            return []
        held, self._pending = self._pending, collections.deque()
        ready = []
        for data, addr, since in held:
            if now - since >= PENDING_SECONDS:
                self.drops[DropReason.UNKNOWN_INDEX] += 1
            elif TRANSPORT_HEADER.unpack_from(data)[1] in keypairs:
                ready.append((data, addr))
            else:  # a later snapshot may still bring its session
                self._pending.append((data, addr, since))
        return self.receive_datagrams_untrusted(ready, now, hold=False)

    def _update_peer(self, config: PeerPlane) -> None:
        peer = self._peers.get(config.public_key)
        if peer is None:
            peer = self._peers[config.public_key] = _Peer(config.public_key, config.endpoint)
        else:
            self._routes.remove_owner(peer)
            peer.endpoint = config.endpoint
        for network in config.allowed_ips:
            self._routes.insert(network, peer)
        keypairs = self._keypairs
        peer.sender = None
        for keys in config.sessions:
            keypair = keypairs.get(keys.local_index)
            if keypair is None or keypair.peer is not peer or keypair.created != keys.created \
                    or keypair.remote_index != keys.remote_index:
                keypair = Keypair(keys.send_key, keys.receive_key, created=keys.created, is_initiator=False,
                                  local_index=keys.local_index, remote_index=keys.remote_index, peer=peer)
                keypair.slot = keys.slot
                keypair.lease_end = 0  # lease before the first seal
            keypair.peer = peer
            keypairs[keys.local_index] = keypair
            if keys.sends and keys.slot >= 0:
                peer.sender = keypair
        indices = tuple(keys.local_index for keys in config.sessions)
        self._forget_sessions(peer, keep=indices)
        self._sessions[config.public_key] = indices

    def _forget_sessions(self, peer: _Peer, keep: tuple[int, ...]) -> None:
        """Drop the peer's earlier sessions not in `keep`; an index that has since gone to
        another peer's session stays that one's."""
        for index in self._sessions.pop(peer.public_key, ()):
            if index not in keep:
                keypair = self._keypairs.get(index)
                if keypair is not None and keypair.peer is peer:
                    del self._keypairs[index]

    def has_urgent(self) -> bool:
        """Packets or forwarded datagrams wait for the control: report now, not at the next
        interval."""
        return bool(self._report.packets or self._report.forwarded)

    def take_report(self) -> WorkerReport | None:
        report = self._report
        report.drops, self.drops = self.drops, collections.Counter()
        if not report:
            self.drops = report.drops
            return None
        self._report = WorkerReport(self.generation)
        return report

    # Outbound.

    def seal_packets(self, packets: list[Packet], now: float) -> list[Datagram | DatagramBatch]:
        out: list[Datagram | DatagramBatch] = []
        lookup = self._routes.lookup
        run_peer: _Peer | None = None
        run: list[Packet] = []
        for packet in packets:
            destination = destination_untrusted(packet)
            peer = None if destination is None else lookup(destination)
            if peer is None:
                self.drops[DropReason.BAD_INNER_PACKET if destination is None else DropReason.NO_ROUTE] += 1
                continue
            if peer is not run_peer:
                if run_peer is not None:
                    self._send_run(run_peer, run, now, out)
                run_peer, run = peer, []
            run.append(packet)
        if run_peer is not None:
            self._send_run(run_peer, run, now, out)
        return out

    def _send_run(self, peer: _Peer, packets: list[Packet], now: float, out: list[Datagram | DatagramBatch]) -> None:
        keypair = peer.sender
        if keypair is None or peer.endpoint is None or now - keypair.created >= REJECT_AFTER_TIME \
                or keypair.send_counter + len(packets) > REJECT_AFTER_MESSAGES:
            # No usable session here: the control stages them and handshakes.
            self._report.packets += [bytes(p) for p in packets]
            return
        if not self._counters.reserve(keypair, len(packets)):  # exhausted: the control rekeys
            self._report.packets += [bytes(p) for p in packets]
            return
        seal = transport.seal_batched if len(packets) > 1 else transport.seal_each
        sent_bytes, sent_data = seal(keypair, packets, self.mtu, peer.endpoint, out)
        entry = self._report.sent.get(peer.public_key)
        if entry is None:
            self._report.sent[peer.public_key] = [sent_bytes, sent_data, now]
        else:
            entry[0] += sent_bytes
            entry[1] = entry[1] or sent_data
            entry[2] = now

    # Inbound.

    def receive_batch_untrusted(self, data: memoryview, size: int, addr: Endpoint, now: float
                                ) -> tuple[list[bytes], list[Datagram | DatagramBatch]] | None:
        """As Device.receive_batch_untrusted; None sends the datagrams the one-by-one way."""
        opened = transport.open_gro_batch(self._keypairs, data, size, now, self.shard, self.shards,
                                          self._routes.lookup, self.drops)
        if opened is None:
            return None
        keypair, packets, nbytes, data_packets = opened
        if nbytes:
            self._received(keypair, addr, nbytes, data_packets, now)
        return packets, []

    def receive_datagrams_untrusted(self, datagrams: list[tuple[bytes | memoryview, Endpoint]], now: float,
                                    *, hold: bool = True, forward: bool = True) -> list[Output]:
        """Open transport messages of our sessions; pass those of other processes' sessions on
        to the control (GRO can bring them here: module docstring). `forward` off: these came
        from the control, and the rest is dropped (nothing goes round). `hold` off: these
        waited for their session, and wait no more."""
        out: list[Output] = []
        drops = self.drops
        keypairs = self._keypairs
        for data, addr in datagrams:
            if len(data) < TRANSPORT_MIN_SIZE or TYPE.unpack_from(data)[0] != MESSAGE_TRANSPORT:
                drops[DropReason.MISROUTED] += 1  # steering sends the rest to the control process
                continue
            receiver = TRANSPORT_HEADER.unpack_from(data)[1]
            if not transport.owned_by(receiver, self.shard, self.shards):
                if forward:
                    self._forward(data, addr, now)  # another process's session
                else:
                    drops[DropReason.MISROUTED] += 1
                continue
            if receiver not in keypairs and hold and len(self._pending) < PENDING_LIMIT:
                self._pending.append((bytes(data), addr, now))  # a session the snapshot brings soon
                continue
            opened = transport.open_one(keypairs, data, now, drops)
            if opened is None:
                continue
            keypair, plaintext = opened
            for packet in transport.inner_packets([plaintext], keypair.peer, self._routes.lookup, drops):
                out.append(TunPacket(packet, keypair.peer.public_key))
            self._received(keypair, addr, len(data), 1 if plaintext else 0, now, roam=hold and forward)
        return out

    def _forward(self, data: bytes | memoryview, addr: Endpoint, now: float) -> None:
        """To the control, if it comes from a peer's own address and the budget allows."""
        if self._endpoints is None:
            self._endpoints = {p.endpoint for p in self._peers.values() if p.endpoint is not None}
        if addr in self._endpoints and self._forward_budget.take(now):
            self._report.forwarded.append((bytes(data), addr))
        else:
            self.drops[DropReason.MISROUTED] += 1

    def _received(self, keypair: Keypair, addr: Endpoint, nbytes: int, data_packets: int, now: float, *,
                  roam: bool = True) -> None:
        """Account for authenticated datagrams; with `roam` (they arrived just now, not held or
        forwarded: older ones must not move it back) the latest source is the peer's endpoint
        here at once, as in the control when it reads the report: an answer sealed meanwhile
        must not go to the old address."""
        peer = keypair.peer
        if roam and peer.endpoint != addr:
            peer.endpoint = addr
            self._endpoints = None
        source = addr if roam else None  # late datagrams roam no one, here or in the control
        entry = self._report.received.get(keypair.local_index)
        if entry is None:
            self._report.received[keypair.local_index] = [nbytes, data_packets, source, now]
        else:
            entry[0] += nbytes
            entry[1] += data_packets
            if source is not None:
                entry[2] = source
            entry[3] = now
