"""A WireGuard interface as a sans-I/O state machine (aioquic/h11 style).

The device never touches a socket, a clock or a random source: the I/O shell passes in
datagrams with their source address, IP packets read from TUN, the time `now` (seconds on a
monotonic clock) and an `rng(n) -> bytes`. It gets back what to write:

* `receive_datagram_untrusted(data, addr, now)` -> TunPacket and Datagram outputs
* `send_packet(ip_packet, now)` -> Datagrams (or none while the packet waits for a handshake)
* `get_timer()` -> when to call `handle_timer(now)`; timer and configuration work queues
  datagrams that `datagrams_to_send(now)` hands over.

The batch forms (`receive_datagrams_untrusted`, `send_packets`) share one output list.
Bad packets never raise; they are dropped and counted in `drops` by DropReason.
"""

import collections
import math
import random
import socket
from collections.abc import Iterable, Sequence
from typing import Any


from overlayd.wireguard import crypto, noise, steering, transport
from overlayd.wireguard.constants import (
    DEFAULT_MTU,
    HANDSHAKE_INITIATION_RATE,
    INITIATION_SIZE,
    KEEPALIVE_TIMEOUT,
    MAX_STAGED_PACKETS,
    MAX_TIMER_HANDSHAKES,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ON_RECEIVE_AFTER,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    RESPONSE_SIZE,
    TRANSPORT_MIN_SIZE,
    ZERO_KEY_MATERIAL_AFTER,
)
from overlayd.wireguard.cookie import ReplyOutcome
from overlayd.wireguard.counters import CounterSpace
from overlayd.wireguard.crypto import RandomBytes
from overlayd.wireguard.errors import InvalidConfigError, InvalidKeyError, UnknownPeerError
from overlayd.wireguard.events import (
    Datagram, DatagramBatch, DatagramSink, DropReason, Endpoint, Output, Packet, TunPacket,
)
from overlayd.wireguard.handshake import HandshakeState
from overlayd.wireguard.identity import Identity
from overlayd.wireguard.ippacket import destination_untrusted, source_and_length_untrusted
from overlayd.wireguard.keypair import Keypair
from overlayd.wireguard.messages import (
    TRANSPORT_HEADER,
    TYPE,
    Initiation,
    Response,
    pack_initiation,
    pack_response,
    parse_cookie_reply_untrusted,
    parse_initiation_untrusted,
    parse_response_untrusted,
)
from overlayd.wireguard.peer import Peer, PeerConfig, PeerStatus
from overlayd.wireguard.plane import ForwardBudget, PeerPlane, PlaneSnapshot, SessionKeys, WorkerReport
from overlayd.wireguard.ratelimit import LoadDetector, RateLimiter, source_key
from overlayd.wireguard.routing import AllowedIPs, Network
from overlayd.wireguard.tai64n import tai64n
from overlayd.wireguard.timers import Timer



def _cookie_source(addr: Endpoint) -> bytes:
    """The bytes a cookie is bound to: source IP and port (as the socket layer wrote them)."""
    host = str(addr[0]).split("%", 1)[0]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.inet_pton(family, host) + int(addr[1]).to_bytes(2, "big")


class Device:
    def __init__(
        self,
        private_key: bytes | None,
        *,
        rng: RandomBytes,
        listen_port: int = 0,
        mtu: int = DEFAULT_MTU,
        wall_offset: float = 0.0,
        load: LoadDetector | None = None,
        rate_limiter: RateLimiter | None = None,
        shards: int = 1,
        counters: CounterSpace | None = None,
    ) -> None:
        """`private_key` None is an interface without identity (as after `wg set private-key
        /dev/null`): peers can be configured, but nothing is sent or accepted until a key is set.
        `wall_offset` turns `now` into Unix time (for TAI64N timestamps and handshake times);
        `listen_port` is only stored for the UAPI to report.

        With `shards` > 1 worker processes share the data path (plane.py): this device is
        shard 0, a peer's sessions get indices that steering.py sends to the peer's shard, send
        counters come from `counters`, and `generation` counts changes the workers must hear of."""
        self._rng = rng
        # Timer jitter needs no secrecy (wireguard-go draws it from a fast PRNG): seeded once,
        # it costs no getrandom() per packet, which an exchange of lone packets would pay.
        self._jitter_source = random.Random(int.from_bytes(rng(8), "little"))
        self.listen_port = listen_port
        self.mtu = mtu
        self.wall_offset = wall_offset
        self._load = load if load is not None else LoadDetector()
        self._rate = rate_limiter if rate_limiter is not None else RateLimiter()
        self.drops: collections.Counter[str] = collections.Counter()
        self._peers: dict[bytes, Peer] = {}
        self._routes: AllowedIPs[Peer] = AllowedIPs()
        self._handshake_index: dict[int, Peer] = {}  # local index of an unfinished handshake
        self._keypair_index: dict[int, Keypair] = {}  # local index of a session
        # Datagrams made outside a receive or send call (timers, configuration), never batched.
        self._outbox: list[Any] = []
        self._identity = None if private_key is None else Identity(private_key)
        self.shards = shards
        self._shard_peers = [0] * shards  # peers per process, to spread them evenly
        self._counters = counters
        self.generation = 0
        # Peers whose part of the workers' plane changed since plane_update last ran (the
        # first update sends every peer).
        self._plane_changes: set[bytes] = set()
        self._plane_sent = False
        # Transport messages for a worker's session that reached us (plane.py: a GRO receive
        # steered by a forged first datagram), for the engine to pass on: take_forwarded().
        self._forwarded: list[tuple[bytes, Endpoint]] = []
        self._forward_budget = ForwardBudget()

    # Identity and configuration.

    @property
    def private_key(self) -> bytes | None:
        return None if self._identity is None else self._identity.private_key

    @property
    def public_key(self) -> bytes | None:
        return None if self._identity is None else self._identity.public_key

    def set_private_key(self, private_key: bytes | None, now: float) -> None:
        """New identity (None: none). Sessions and handshakes are dropped, a peer with the new
        public key is removed; what waited for a session is sent with the new identity."""
        identity = None if private_key is None else Identity(private_key)
        if identity is not None and identity.public_key in self._peers:  # not our own peer (as wireguard-go)
            self.remove_peer(identity.public_key)
        self._identity = identity
        self.generation += 1
        for peer in self._peers.values():
            self._plane_changed(peer)
            peer.static_static = None if identity is None else identity.static_static(peer.public_key)
            self._forget_keypairs(peer.keypairs.clear())
            self._free_handshake_index(peer)
            peer.handshake.clear()
            if identity is not None and (peer.staged or peer.persistent_keepalive):
                self._send_keepalive(peer, now, self._outbox)

    def has_peer(self, public_key: bytes) -> bool:
        return public_key in self._peers

    def set_peer(self, config: PeerConfig, now: float) -> None:
        """Add a peer or update one (see PeerConfig for what each field replaces)."""
        self.update_peer(
            config.public_key, now,
            preshared_key=noise.NO_PRESHARED_KEY if config.preshared_key is None else config.preshared_key,
            endpoint=config.endpoint, persistent_keepalive=config.persistent_keepalive,
            allowed_ips=config.allowed_ips, replace_allowed_ips=True,
        )

    def update_peer(
        self, public_key: bytes, now: float, *, preshared_key: bytes | None = None, endpoint: Endpoint | None = None,
        persistent_keepalive: int | None = None, allowed_ips: Iterable[Network] = (),
        replace_allowed_ips: bool = False,
    ) -> None:
        """Create or change a peer with `wg set`'s meaning: None keeps a value (a new peer has
        none), an all-zero preshared key is no preshared key, allowed IPs are added to the peer's
        unless `replace_allowed_ips`. Costs what the given IPs cost, whatever the peer has."""
        public_key = crypto.check_key(public_key, "peer public key")
        identity = self._identity
        if identity is not None and public_key == identity.public_key:
            raise InvalidKeyError("a peer cannot have the interface's own public key")
        if preshared_key is not None:
            preshared_key = crypto.check_key(preshared_key, "preshared key")
        if persistent_keepalive is not None and not 0 <= persistent_keepalive <= 65535:
            raise InvalidConfigError("persistent keepalive must be 0..65535 seconds")
        peer = self._peers.get(public_key)
        if peer is None:
            if crypto.is_low_order(public_key):
                raise InvalidKeyError("peer public key is a low-order point")
            static_static = None if identity is None else identity.static_static(public_key)
            peer = self._peers[public_key] = Peer(public_key, static_static)
            # The process with the fewest peers, workers before the control (it also handshakes).
            peer.shard = min((*range(1, self.shards), 0), key=self._shard_peers.__getitem__)
            self._shard_peers[peer.shard] += 1
        self._plane_changed(peer)
        if preshared_key is not None:
            peer.preshared_key = preshared_key
        if endpoint is not None:
            peer.endpoint = endpoint
        if replace_allowed_ips:
            self._routes.remove_owner(peer)
        for network in allowed_ips:
            previous = self._routes.insert(network, peer)
            if previous is not None:  # the workers must hear that it lost the network
                self._plane_changed(previous)
        if persistent_keepalive is not None:
            keepalive_was_off = peer.persistent_keepalive == 0
            peer.persistent_keepalive = persistent_keepalive
            if keepalive_was_off and persistent_keepalive > 0:
                self._send_keepalive(peer, now, self._outbox)  # as wireguard-go: start at once

    def remove_peer(self, public_key: bytes) -> None:
        peer = self._peers.pop(public_key, None)
        if peer is None:
            raise UnknownPeerError("no peer with this public key")
        self._plane_changed(peer)
        self._shard_peers[peer.shard] -= 1
        self._zero_all(peer)
        self._routes.remove_owner(peer)

    def peer_status(self, public_key: bytes) -> PeerStatus:
        peer = self._peers.get(public_key)
        if peer is None:
            raise UnknownPeerError("no peer with this public key")
        psk = None if crypto.constant_time_equal(peer.preshared_key, noise.NO_PRESHARED_KEY) else peer.preshared_key
        last = None if peer.last_handshake is None else peer.last_handshake + self.wall_offset
        return PeerStatus(
            public_key=peer.public_key, preshared_key=psk, endpoint=peer.endpoint,
            allowed_ips=tuple(self._routes.networks_of(peer)), persistent_keepalive=peer.persistent_keepalive,
            rx_bytes=peer.rx_bytes, tx_bytes=peer.tx_bytes, last_handshake=last,
        )

    def shard_of(self, public_key: bytes) -> int:
        """The process that opens this peer's sessions (0: this one)."""
        peer = self._peers.get(public_key)
        if peer is None:
            raise UnknownPeerError("no peer with this public key")
        return peer.shard

    def peer_statuses(self) -> list[PeerStatus]:
        return [self.peer_status(key) for key in self._peers]

    # Outputs queued outside the receive/send calls, and timers.

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        deadline = min((p.timers.next_deadline() for p in self._peers.values()), default=math.inf)
        return None if deadline == math.inf else deadline

    def handle_timer(self, now: float) -> None:
        for peer in list(self._peers.values()):
            for timer in peer.timers.expired(now):
                self._on_timer(peer, timer, now)

    def _on_timer(self, peer: Peer, timer: Timer, now: float) -> None:
        timers = peer.timers
        out = self._outbox
        if timer is Timer.RETRANSMIT_HANDSHAKE:
            if timers.handshake_attempts > MAX_TIMER_HANDSHAKES:
                # Give up: drop what waited for the session, and destroy leftovers later.
                timers.disarm(Timer.SEND_KEEPALIVE)
                self._drop(DropReason.HANDSHAKE_GAVE_UP, len(peer.staged))
                peer.staged.clear()
                if not timers.pending(Timer.ZERO_KEY_MATERIAL):
                    timers.arm(Timer.ZERO_KEY_MATERIAL, now + ZERO_KEY_MATERIAL_AFTER)
            else:
                timers.handshake_attempts += 1
                self._send_initiation(peer, now, out, is_retry=True)
        elif timer is Timer.SEND_KEEPALIVE:
            self._send_keepalive(peer, now, out)
            if timers.need_another_keepalive:
                timers.need_another_keepalive = False
                timers.arm(Timer.SEND_KEEPALIVE, now + KEEPALIVE_TIMEOUT)
        elif timer is Timer.NEW_HANDSHAKE:
            self._send_initiation(peer, now, out, is_retry=False)
        elif timer is Timer.ZERO_KEY_MATERIAL:
            self._zero_all(peer)
        elif timer is Timer.PERSISTENT_KEEPALIVE and peer.persistent_keepalive > 0:
            self._send_keepalive(peer, now, out)

    # Outbound: packets from TUN.

    def send_packet(self, packet: Packet, now: float) -> list[Datagram]:
        out: list[Any] = []  # one Datagram each: nothing is batched here
        peer = self._route(packet)
        if peer is not None:
            self._send_run(peer, (packet,), now, out, False)
        return out

    def send_packets(self, packets: Iterable[Packet], now: float) -> list[Datagram]:
        """Batch form: consecutive packets for one peer are sealed together (one session check and
        one timer update per run), and their datagrams are adjacent with one endpoint (for GSO)."""
        out: list[Any] = []  # one Datagram each: nothing is batched here
        self._send_packets(packets, now, out, batched=False)
        return out

    def seal_packets(self, packets: Iterable[Packet], now: float) -> list[Datagram | DatagramBatch]:
        """send_packets for a shell with UDP GSO: a run's datagrams come sealed back to back in
        one buffer per GSO send (DatagramBatch), not as one object each. Handshake messages and
        packets that waited for a session still come as Datagrams."""
        out: list[Datagram | DatagramBatch] = []
        self._send_packets(packets, now, out, batched=True)
        return out

    def _send_packets(self, packets: Iterable[Packet], now: float, out: DatagramSink, *,
                      batched: bool) -> None:
        route = self._route
        run_peer: Peer | None = None
        run: list[Packet] = []
        for packet in packets:
            peer = route(packet)
            if peer is None:
                continue
            if peer is not run_peer:
                if run_peer is not None:
                    self._send_run(run_peer, run, now, out, batched)
                run_peer, run = peer, []
            run.append(packet)
        if run_peer is not None:
            self._send_run(run_peer, run, now, out, batched)

    def _route(self, packet: Packet) -> Peer | None:
        """Cryptokey routing: the peer whose allowed IPs hold the destination."""
        destination = destination_untrusted(packet)
        if destination is None:
            self.drops[DropReason.BAD_INNER_PACKET] += 1
            return None
        peer = self._routes.lookup(destination)
        if peer is None:
            self.drops[DropReason.NO_ROUTE] += 1
        return peer

    def _send_run(self, peer: Peer, packets: Sequence[Packet], now: float, out: DatagramSink, batched: bool) -> None:
        keypair = peer.keypairs.current
        if (
            keypair is not None and not peer.staged and peer.endpoint is not None
            and keypair.send_counter + len(packets) <= REJECT_AFTER_MESSAGES
            and now - keypair.created < REJECT_AFTER_TIME
        ):
            self._transmit(peer, keypair, packets, now, out, batched)
            return
        for packet in packets:
            self._stage(peer, packet)
        self._send_staged(peer, now, out)

    def _stage(self, peer: Peer, packet: Packet) -> None:
        if len(peer.staged) >= MAX_STAGED_PACKETS:
            peer.staged.popleft()
            self.drops[DropReason.STAGED_OVERFLOW] += 1
        peer.staged.append(packet)

    def _send_keepalive(self, peer: Peer, now: float, out: DatagramSink) -> None:
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged(peer, now, out)

    def _send_staged(self, peer: Peer, now: float, out: DatagramSink) -> None:
        if not peer.staged:
            return
        keypair = peer.keypairs.current
        if (
            keypair is None or now - keypair.created >= REJECT_AFTER_TIME
            or keypair.send_counter + len(peer.staged) > REJECT_AFTER_MESSAGES
        ):
            self._send_initiation(peer, now, out, is_retry=False)
            return
        if peer.endpoint is None:
            self._drop(DropReason.NO_ENDPOINT, len(peer.staged))
            peer.staged.clear()
            return
        packets = tuple(peer.staged)
        peer.staged.clear()
        self._transmit(peer, keypair, packets, now, out, False)

    def _transmit(
        self, peer: Peer, keypair: Keypair, packets: Sequence[Packet], now: float, out: DatagramSink, batched: bool
    ) -> None:
        """Encrypt and emit (transport.py has the hot loops), then the bookkeeping once per run."""
        endpoint = peer.endpoint
        assert endpoint is not None  # callers checked it
        if keypair.slot >= 0 and self._counters is not None:
            fresh = self._counters.reserve(keypair, len(packets))
        else:  # one process (lease_end is the message limit), or a slot given up: no new lease
            fresh = keypair.send_counter + len(packets) <= keypair.lease_end
        if not fresh:  # exhausted: rekey
            for packet in packets:
                self._stage(peer, packet)
            self._send_initiation(peer, now, out, is_retry=False)
            return
        seal = transport.seal_batched if batched and len(packets) > 1 else transport.seal_each
        sent_bytes, sent_data = seal(keypair, packets, self.mtu, endpoint, out)
        self._sent(peer, keypair, sent_bytes, sent_data, now, out)

    def _sent(self, peer: Peer, keypair: Keypair, sent_bytes: int, sent_data: bool, now: float,
              out: DatagramSink) -> None:
        """Bookkeeping after transport packets went out with `keypair` (here or in a worker)."""
        counter = keypair.send_counter
        peer.tx_bytes += sent_bytes
        timers = peer.timers
        timers.on_authenticated_packet_traversal(now, peer.persistent_keepalive)
        timers.on_authenticated_packet_sent()
        if sent_data:
            timers.on_data_sent(now, self._jitter)
        # Keep the key fresh: by message count, or by age if we were the initiator.
        if counter > REKEY_AFTER_MESSAGES or (keypair.is_initiator and now - keypair.created > REKEY_AFTER_TIME):
            self._send_initiation(peer, now, out, is_retry=False)

    # Handshake messages we send.

    def _send_initiation(self, peer: Peer, now: float, out: DatagramSink, *, is_retry: bool) -> None:
        static_static = peer.static_static
        identity = self._identity
        if static_static is None or identity is None:
            return  # no identity: no initiation (as the kernel), staged packets wait for a key
        timers = peer.timers
        if not is_retry:
            timers.handshake_attempts = 0
        handshake = peer.handshake
        if handshake.last_sent is not None and now - handshake.last_sent < REKEY_TIMEOUT:
            return  # at most one initiation per REKEY_TIMEOUT
        handshake.last_sent = now
        self._free_handshake_index(peer)
        index = self._new_index(peer)
        ephemeral = crypto.private_key_object(crypto.generate_private_key(self._rng))
        state = peer.initiator_start.copy()
        fields = noise.write_initiation(
            state, ephemeral=ephemeral, static_public=identity.public_key, remote_static=peer.public_key,
            static_static=static_static, payload=tai64n(now + self.wall_offset),
        )
        if fields is None:  # unreachable: the peer's key was checked not to be low order
            raise InvalidKeyError("peer public key is a low-order point")
        self._handshake_index[index] = peer
        handshake.initiation_created(state, ephemeral, index)
        message = pack_initiation(Initiation(index, *fields))
        peer.cookies.add_macs(message, now)
        timers.on_authenticated_packet_traversal(now, peer.persistent_keepalive)
        timers.on_authenticated_packet_sent()
        self._emit(peer, message, out)
        timers.on_handshake_initiated(now, self._jitter())

    def _send_response(self, peer: Peer, now: float, out: DatagramSink) -> None:
        handshake = peer.handshake
        assert handshake.symmetric is not None  # set by initiation_consumed
        ephemeral = crypto.private_key_object(crypto.generate_private_key(self._rng))
        fields = noise.write_response(
            handshake.symmetric, ephemeral=ephemeral, remote_ephemeral=handshake.remote_ephemeral,
            remote_static=peer.public_key, preshared_key=peer.preshared_key, payload=b"",
        )
        if fields is None:  # the initiator's ephemeral key is a low-order point
            self.drops[DropReason.BAD_HANDSHAKE] += 1
            handshake.clear()
            return
        self._free_handshake_index(peer)
        index = self._new_index(peer)
        self._handshake_index[index] = peer
        handshake.response_created(index)
        handshake.last_sent = now
        message = pack_response(Response(index, handshake.remote_index, *fields))
        peer.cookies.add_macs(message, now)
        self._begin_session(peer, now)
        timers = peer.timers
        timers.on_session_derived(now)
        timers.on_authenticated_packet_traversal(now, peer.persistent_keepalive)
        timers.on_authenticated_packet_sent()
        self._emit(peer, message, out)

    def _begin_session(self, peer: Peer, now: float) -> None:
        """Derive the transport keys from the finished handshake and rotate keypairs."""
        handshake = peer.handshake
        assert handshake.symmetric is not None and handshake.local_index is not None
        is_initiator = handshake.state is HandshakeState.RESPONSE_CONSUMED
        initiator_key, responder_key = handshake.symmetric.split()
        send, receive = (initiator_key, responder_key) if is_initiator else (responder_key, initiator_key)
        index = handshake.local_index
        keypair = Keypair(
            send, receive, created=now, is_initiator=is_initiator, local_index=index,
            remote_index=handshake.remote_index, peer=peer,
        )
        if self._counters is not None:
            slot = self._counters.new_slot()
            if slot is not None:  # else only this process sends with it (workers hand packets over)
                keypair.slot, keypair.lease_end = slot, 0
        del self._handshake_index[index]
        self._keypair_index[index] = keypair  # the handshake's index now names the session
        self._plane_changed(peer)
        handshake.session_begun()
        if is_initiator:
            dropped = peer.keypairs.install_as_initiator(keypair)
        else:
            dropped = peer.keypairs.install_as_responder(keypair)
        self._forget_keypairs(dropped)

    def _emit(self, peer: Peer, message: bytes | bytearray, out: DatagramSink) -> None:
        if peer.endpoint is None:
            self.drops[DropReason.NO_ENDPOINT] += 1
            return
        peer.tx_bytes += len(message)
        out.append(Datagram(message, peer.endpoint))

    # Inbound: datagrams from UDP.

    def receive_datagram_untrusted(self, data: bytes, addr: Endpoint, now: float) -> list[Output]:
        out: list[Output] = []
        self._receive(data, addr, now, out)
        return out

    def receive_datagrams_untrusted(self, datagrams: Iterable[tuple[bytes | memoryview, Endpoint]],
                                    now: float, *, roam: bool = True) -> list[Output]:
        """Batch form. Each transport packet is decrypted and checked on its own, but the per-peer
        bookkeeping (roaming, stats, timers, key confirmation) runs once per run of packets that
        share a session and a source address. `roam` off: the datagrams are older than what
        arrived meanwhile (a worker forwarded them), so their source moves no endpoint."""
        out: list[Output] = []
        open_transport = self._open_transport
        deliver = self._deliver_inner
        run_keypair: Keypair | None = None
        run_addr: Endpoint | None = ()
        run_bytes = run_data = 0
        for data, addr in datagrams:
            if len(data) < TRANSPORT_MIN_SIZE or TYPE.unpack_from(data)[0] != MESSAGE_TRANSPORT:
                if run_keypair is not None:  # keep order with handshake messages
                    self._transport_received(run_keypair, run_addr, run_bytes, run_data, now, out)
                    run_keypair = None
                self._receive(bytes(data), addr, now, out)  # (bytes of bytes is no copy)
                continue
            opened = open_transport(data, addr, now)
            if opened is None:
                continue
            keypair, plaintext = opened
            source = addr if roam else None
            if keypair is not run_keypair or source != run_addr:
                if run_keypair is not None:
                    self._transport_received(run_keypair, run_addr, run_bytes, run_data, now, out)
                run_keypair, run_addr, run_bytes, run_data = keypair, source, 0, 0
            run_bytes += len(data)
            if plaintext:
                run_data += 1
                deliver(keypair.peer, plaintext, out)
        if run_keypair is not None:
            self._transport_received(run_keypair, run_addr, run_bytes, run_data, now, out)
        return out

    def receive_batch_untrusted(self, data: memoryview, size: int, addr: Endpoint, now: float
                                ) -> tuple[list[bytes], list[Datagram | DatagramBatch]] | None:
        """Fast path for one GRO receive: datagrams of `size` bytes back to back in `data` (the
        last may be shorter), all from `addr`. If they are all transport messages for one live
        session, they are opened with the bookkeeping done once, and the result is (inner packets
        for TUN, datagrams to send). Otherwise None, with nothing changed: the caller then hands
        the datagrams to receive_datagrams_untrusted, which takes them one by one."""
        opened = transport.open_gro_batch(self._keypair_index, data, size, now, 0, self.shards,
                                          self._routes.lookup, self.drops)
        if opened is None:
            return None
        keypair, packets, nbytes, data_packets = opened
        out: list[Datagram | DatagramBatch] = []
        if nbytes:  # something authentic arrived
            self._transport_received(keypair, addr, nbytes, data_packets, now, out)
        return packets, out

    def _receive(self, data: bytes, addr: Endpoint, now: float, out: list[Output]) -> None:
        if len(data) < 4:
            self.drops[DropReason.SHORT] += 1
            return
        kind = TYPE.unpack_from(data)[0]
        if kind == MESSAGE_TRANSPORT:
            if len(data) < TRANSPORT_MIN_SIZE:
                self.drops[DropReason.SHORT] += 1
                return
            opened = self._open_transport(data, addr, now)
            if opened is not None:
                keypair, plaintext = opened
                self._transport_received(keypair, addr, len(data), 1 if plaintext else 0, now, out)
                if plaintext:
                    self._deliver_inner(keypair.peer, plaintext, out)
        elif kind == MESSAGE_INITIATION or kind == MESSAGE_RESPONSE:
            self._receive_handshake(kind, data, addr, now, out)
        elif kind == MESSAGE_COOKIE_REPLY:
            self._receive_cookie_reply(data, now)
        else:
            self.drops[DropReason.UNKNOWN_TYPE] += 1

    def _open_transport(self, data: bytes | memoryview, addr: Endpoint, now: float) -> tuple[Keypair, bytes] | None:
        if self.shards > 1:
            receiver = TRANSPORT_HEADER.unpack_from(data)[1]
            if not transport.owned_by(receiver, 0, self.shards):
                # A worker keeps this session's replay window: it opens the datagram. Only what
                # comes from the session's peer's own address is passed on (plane.py), within a
                # budget: anyone else's is junk.
                keypair = self._keypair_index.get(receiver)
                if keypair is not None and keypair.peer.endpoint == addr and self._forward_budget.take(now):
                    self._forwarded.append((bytes(data), addr))
                else:
                    self.drops[DropReason.MISROUTED] += 1
                return None
        return transport.open_one(self._keypair_index, data, now, self.drops)

    @property
    def has_forwarded(self) -> bool:
        return bool(self._forwarded)

    def take_forwarded(self) -> dict[int, list[tuple[bytes, Endpoint]]]:
        """Transport messages that reached us for a worker's session, by the worker that owns
        them (steering.py's rule), to hand over; they are ours no more."""
        if not self._forwarded:
            return {}
        by_shard: dict[int, list[tuple[bytes, Endpoint]]] = {}
        for data, addr in self._forwarded:
            by_shard.setdefault(steering.worker_for(data, self.shards), []).append((data, addr))
        self._forwarded = []
        return by_shard

    def _transport_received(
        self, keypair: Keypair, addr: Endpoint | None, nbytes: int, data_packets: int, now: float, out: DatagramSink
    ) -> None:
        """Bookkeeping after authenticated transport packets (`data_packets` of them not keepalives);
        `addr` None: their source is not news (older datagrams)."""
        peer = keypair.peer
        if addr is not None and peer.endpoint != addr:  # roaming: the latest authenticated source wins
            peer.endpoint = addr
            self._plane_changed(peer)
        peer.rx_bytes += nbytes
        timers = peer.timers
        if keypair is peer.keypairs.next:
            # First packet on the responder's new keypair: the initiator has it, start using it.
            _, dropped = peer.keypairs.confirm(keypair)
            self._forget_keypairs(dropped)
            self._plane_changed(peer)
            timers.on_handshake_complete()
            peer.last_handshake = now
            self._send_staged(peer, now, out)
        current = peer.keypairs.current
        if (
            not timers.sent_lastminute_handshake and current is not None and current.is_initiator
            and now - current.created > REKEY_ON_RECEIVE_AFTER
        ):
            # The initiator's last chance to rekey before the session dies (whitepaper 6.2).
            timers.sent_lastminute_handshake = True
            self._send_initiation(peer, now, out, is_retry=False)
        timers.on_authenticated_packet_traversal(now, peer.persistent_keepalive)
        timers.on_authenticated_packet_received()
        if data_packets:
            timers.on_data_received(now, data_packets)

    def _deliver_inner(self, peer: Peer, plaintext: bytes, out: list[Output]) -> None:
        """Hand a decrypted packet to TUN if it is IP and its source is one of the peer's allowed IPs."""
        header = source_and_length_untrusted(plaintext)
        if header is None:
            self.drops[DropReason.BAD_INNER_PACKET] += 1
            return
        source, length = header
        if self._routes.lookup(source) is not peer:
            self.drops[DropReason.NOT_ALLOWED_IP] += 1
            return
        out.append(TunPacket(plaintext if length == len(plaintext) else plaintext[:length], peer.public_key))

    def _receive_handshake(self, kind: int, data: bytes, addr: Endpoint, now: float, out: list[Output]) -> None:
        if len(data) != (INITIATION_SIZE if kind == MESSAGE_INITIATION else RESPONSE_SIZE):
            self.drops[DropReason.BAD_SIZE] += 1
            return
        identity = self._identity
        if identity is None:
            self.drops[DropReason.NO_IDENTITY] += 1
            return
        cookies = identity.cookies
        if not cookies.check_mac1(data):
            self.drops[DropReason.BAD_MAC] += 1
            return
        # Only mac1-valid messages count: junk that anyone can send must not switch on load.
        if self._load.observe_handshake(now):
            source = _cookie_source(addr)
            reply = cookies.reply_unless_mac2(data, source, now, self._rng)
            if reply is not None:
                out.append(Datagram(reply, addr))
                self.drops[DropReason.COOKIE_SENT] += 1
                return
            if not self._rate.allow(source_key(str(addr[0])), now):
                self.drops[DropReason.RATE_LIMITED] += 1
                return
        if kind == MESSAGE_INITIATION:
            self._receive_initiation(identity, data, addr, now, out)
        else:
            self._receive_response(identity, data, addr, now, out)

    def _receive_initiation(self, identity: Identity, data: bytes, addr: Endpoint, now: float,
                            out: list[Output]) -> None:
        message = parse_initiation_untrusted(data)
        assert message is not None  # type and size were checked by the caller
        state = identity.responder_start.copy()
        remote_static = noise.read_initiation_static(
            state, static_private=identity.static, remote_ephemeral=message.ephemeral,
            encrypted_static=message.encrypted_static,
        )
        if remote_static is None:
            self.drops[DropReason.BAD_HANDSHAKE] += 1
            return
        peer = self._peers.get(remote_static)
        if peer is None:
            self.drops[DropReason.UNKNOWN_PEER] += 1
            return
        assert peer.static_static is not None  # set for every peer while there is an identity
        timestamp = noise.read_initiation_payload(
            state, static_static=peer.static_static, encrypted_payload=message.encrypted_timestamp
        )
        if timestamp is None:
            self.drops[DropReason.BAD_HANDSHAKE] += 1
            return
        handshake = peer.handshake
        if timestamp <= handshake.last_timestamp:
            self.drops[DropReason.HANDSHAKE_REPLAY] += 1
            return
        last = handshake.last_initiation_consumed
        if last is not None and now - last <= HANDSHAKE_INITIATION_RATE:
            self.drops[DropReason.HANDSHAKE_FLOOD] += 1
            return
        handshake.initiation_consumed(state, message.sender, message.ephemeral, timestamp, now)
        self._roam(peer, addr)
        peer.rx_bytes += len(data)
        peer.timers.on_authenticated_packet_traversal(now, peer.persistent_keepalive)
        peer.timers.on_authenticated_packet_received()
        self._send_response(peer, now, out)

    def _receive_response(self, identity: Identity, data: bytes, addr: Endpoint, now: float,
                          out: list[Output]) -> None:
        message = parse_response_untrusted(data)
        assert message is not None  # type and size were checked by the caller
        peer = self._handshake_index.get(message.receiver)
        if peer is None:
            self.drops[DropReason.UNKNOWN_INDEX] += 1
            return
        handshake = peer.handshake
        if handshake.state is not HandshakeState.INITIATION_CREATED:
            self.drops[DropReason.INVALID_STATE] += 1
            return
        assert handshake.symmetric is not None and handshake.local_ephemeral is not None
        state = handshake.symmetric.copy()
        payload = noise.read_response(
            state, ephemeral=handshake.local_ephemeral, static_private=identity.static,
            remote_ephemeral=message.ephemeral, preshared_key=peer.preshared_key,
            encrypted_payload=message.encrypted_nothing,
        )
        if payload is None:
            self.drops[DropReason.BAD_HANDSHAKE] += 1
            return
        handshake.response_consumed(state, message.sender)
        self._roam(peer, addr)
        peer.rx_bytes += len(data)
        timers = peer.timers
        timers.on_authenticated_packet_traversal(now, peer.persistent_keepalive)
        timers.on_authenticated_packet_received()
        self._begin_session(peer, now)
        timers.on_session_derived(now)
        timers.on_handshake_complete()
        peer.last_handshake = now
        # Confirm the new key to the responder: staged data, or else a keepalive.
        self._send_keepalive(peer, now, out)

    def _receive_cookie_reply(self, data: bytes, now: float) -> None:
        message = parse_cookie_reply_untrusted(data)
        if message is None:
            self.drops[DropReason.BAD_SIZE] += 1
            return
        peer = self._handshake_index.get(message.receiver)
        if peer is None:
            keypair = self._keypair_index.get(message.receiver)
            peer = keypair.peer if keypair is not None else None
        if peer is None:
            self.drops[DropReason.UNKNOWN_INDEX] += 1
            return
        outcome = peer.cookies.consume_reply(message, now)
        if outcome is ReplyOutcome.UNEXPECTED:
            self.drops[DropReason.UNEXPECTED_COOKIE] += 1
        elif outcome is ReplyOutcome.BAD:
            self.drops[DropReason.BAD_COOKIE] += 1

    # Worker processes (plane.py).

    def plane_snapshot(self) -> PlaneSnapshot:
        """What the workers need: every peer's endpoint, allowed IPs and sessions."""
        return PlaneSnapshot(self.generation, self.mtu, tuple(map(self._peer_plane, self._peers.values())))

    def plane_update(self) -> PlaneSnapshot:
        """What changed for the workers since the last call (every peer, the first time): a
        change costs the workers what the changed peers cost, not what all peers cost."""
        if not self._plane_sent:
            self._plane_sent = True
            self._plane_changes.clear()
            return self.plane_snapshot()
        changed, self._plane_changes = self._plane_changes, set()
        peers = self._peers
        return PlaneSnapshot(self.generation, self.mtu,
                             tuple(self._peer_plane(peers[key]) for key in changed if key in peers),
                             removed=tuple(key for key in changed if key not in peers), full=False)

    def _plane_changed(self, peer: Peer) -> None:
        self.generation += 1
        if self.shards > 1:  # no workers, no updates: a removed peer's key would stay here
            self._plane_changes.add(peer.public_key)

    def _peer_plane(self, peer: Peer) -> PeerPlane:
        keypairs = peer.keypairs
        sessions = tuple(
            SessionKeys(k.local_index, k.remote_index, k.send_key, k.receive_key, k.created, k.slot,
                        sends=k is keypairs.current)
            for k in (keypairs.previous, keypairs.current, keypairs.next) if k is not None
        )
        return PeerPlane(peer.public_key, peer.endpoint, tuple(self._routes.networks_of(peer)), sessions)

    def apply_report(self, report: WorkerReport, now: float) -> list[Output]:
        """A worker's traffic, as if it had passed here: stats, roaming, key confirmation and
        timers; the packets it could not send are sent or staged, and the datagrams it
        forwarded are received here (those for another worker wait in take_forwarded).
        Returns datagrams to send and packets for TUN."""
        out: list[Output] = []
        self.drops.update(report.drops)
        # In the order they last happened, each at its own time, as the timers would have seen them.
        events = [(entry[3], False, index, entry) for index, entry in report.received.items()]
        events += [(entry[2], True, key, entry) for key, entry in report.sent.items()]
        events.sort(key=lambda event: (event[0], event[1]))
        for when, is_send, key, entry in events:
            if is_send:
                peer = self._peers.get(key)
                keypair = None if peer is None else peer.keypairs.current
                if peer is not None and keypair is not None:
                    self._sent(peer, keypair, entry[0], entry[1], when, out)
            else:
                keypair = self._keypair_index.get(key)
                if keypair is not None:  # else gone since: its traffic no longer matters
                    self._transport_received(keypair, entry[2], entry[0], entry[1], when, out)
        if report.packets:
            self._send_packets(report.packets, now, out, batched=True)
        if report.forwarded:  # older than what came meanwhile: no roaming on them
            out += self.receive_datagrams_untrusted(report.forwarded, now, roam=False)
        return out

    # Bookkeeping.

    def _roam(self, peer: Peer, addr: Endpoint) -> None:
        if peer.endpoint != addr:
            peer.endpoint = addr
            self._plane_changed(peer)

    def _drop(self, reason: DropReason, count: int) -> None:
        if count:
            self.drops[reason] += count

    def _jitter(self) -> float:
        return self._jitter_source.random() * REKEY_TIMEOUT_JITTER_MAX

    def _new_index(self, peer: Peer) -> int:
        """A free random index; with shards, one that steering sends to the peer's shard, so
        that all its sessions are opened in one process (one replay window, in order)."""
        shard = peer.shard
        while True:
            index = int.from_bytes(self._rng(4), "little")
            if transport.owned_by(index, shard, self.shards) \
                    and index not in self._handshake_index and index not in self._keypair_index:
                return index

    def _free_handshake_index(self, peer: Peer) -> None:
        index = peer.handshake.local_index
        if index is not None and self._handshake_index.get(index) is peer:
            del self._handshake_index[index]

    def _forget_keypairs(self, keypairs: Iterable[Keypair]) -> None:
        for keypair in keypairs:
            self._plane_changed(keypair.peer)
            if self._keypair_index.get(keypair.local_index) is keypair:
                del self._keypair_index[keypair.local_index]
            if keypair.slot >= 0 and self._counters is not None:
                self._counters.free_slot(keypair.slot)
                # Workers had leases from that slot too: never seal past our own lease again.
                keypair.slot, keypair.lease_end = -1, min(keypair.lease_end, keypair.send_counter)

    def _zero_all(self, peer: Peer) -> None:
        """Destroy every session and the unfinished handshake, and flush queued packets."""
        self._forget_keypairs(peer.keypairs.clear())
        self._free_handshake_index(peer)
        peer.handshake.clear()
        peer.staged.clear()
