"""The userspace WireGuard data path: one TUN device and one UDP socket around a core Device.

Two threads, neither scheduling anything per packet:
- data: both directions in one loop. TUN -> frames (64 KiB TCP super-packets with offload)
  cut into segments -> `Device.seal_packets` (sealed back to back in one buffer per GSO send)
  -> UDP GSO sends (one syscall per run of up to 64 datagrams to one peer); UDP GRO receives
  (several at once) -> `Device.receive_batch_untrusted` per GRO batch of one session (else
  `receive_datagrams_untrusted`) -> TCP segments glued back together -> one TUN write per
  super-packet. It sleeps in poll() only when both sides are empty.
- timers: sleeps until `Device.get_timer()` (at most TIMER_TICK), runs `handle_timer`, sends
  what `datagrams_to_send` hands over, and follows the TUN MTU.
UAPI get/set calls come from the caller's threads.

Why one data thread: the cryptography library keeps the GIL during AEAD (measured: two threads
sealing 64 KiB buffers take as long as one doing both), so a process runs Python on one core at
a time anyway, and with a thread per direction every TCP ACK going the other way cost a GIL
handoff, which cost more than handling the ACK (about 10% more throughput with one thread).
The core's Device is not thread-safe: every call into it holds `_lock` (taken once per batch;
the timer thread and UAPI calls are the only other takers).
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Sequence

from overlayd.errors import KernelError
from overlayd.wireguard import crypto
from overlayd.wireguard.device import Device
from overlayd.wireguard.events import Datagram, DatagramBatch, Endpoint, Output, Packet, TunPacket
from overlayd.wireguard.offload import coalesce, split_frame
from overlayd.wireguard.tun import TunDevice
from overlayd.wireguard.uapi import ZERO_KEY, DeviceState, PeerState, PeerUpdate, SetRequest, UapiError
from overlayd.wireguard.udp import RECEIVE_BUFFER_BYTES, UdpSocket, from_socket, max_gso_segments, segments

log = logging.getLogger(__name__)

TIMER_TICK = 0.25  # a timer armed by the data path fires at most this late
MTU_CHECK_INTERVAL = 1.0
OUTBOUND_BATCH = 64  # packets taken from TUN before sealing them in one locked call
INBOUND_BATCH = 64  # datagrams taken from UDP before opening them in one locked call
INBOUND_BUFFERS = 8  # 64 KiB receive buffers (a GRO receive keeps its buffer until handled)
TUN_FRAME_BYTES = 65536 + 1024
TRANSPORT_OVERHEAD = 32  # header and tag around an inner packet of at most MTU bytes
_TRANSPORT = 4
_POLL_MS = 1000


class Engine:
    """A running userspace WireGuard interface. Build it, `start()`, configure with `apply()`."""

    def __init__(
        self,
        tun: TunDevice,
        *,
        listen_port: int = 0,
        rng: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tun = tun
        self._rng = rng
        self._clock = clock
        self._lock = threading.Lock()  # guards _device
        self._config_lock = threading.Lock()  # one UAPI set at a time
        # No identity until a UAPI set gives a private key: the device sends and accepts nothing.
        self._device = Device(None, rng=rng, mtu=tun.mtu, wall_offset=time.time() - clock())
        self._mtu = 0  # what _follow_mtu last saw
        self._udp = UdpSocket(listen_port)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        self._timer_wake = threading.Event()
        self._threads: list[threading.Thread] = []
        # Per-batch counters (tun_reads, udp_sends, ...) and errors: logged at shutdown.
        self.stats: collections.Counter[str] = collections.Counter()

    # Lifecycle.

    def start(self) -> None:
        self._follow_mtu()
        for name, target in (("data", self._data_path), ("timers", self._timers)):
            thread = threading.Thread(target=self._guard, args=(target,), name=f"wg-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def counters(self) -> dict[str, int]:
        """Data path counters and the core's drop counts (drop_<reason>), for logs and benchmarks."""
        with self._lock:
            drops = {f"drop_{reason}": n for reason, n in self._device.drops.items()}
        udp = self._udp
        return {**self.stats, "udp_sends": udp.sends, "udp_send_errors": udp.send_errors, **drops}

    def stop(self) -> None:
        """Stop the threads and close the socket; the caller closes the TUN device."""
        self._stopping = True
        os.write(self._stop_w, b"x")
        self._timer_wake.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._udp.close()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _guard(self, loop: Callable[[], None]) -> None:
        """Run a thread's loop; a bug in one batch is logged and the loop goes on."""
        while not self._stopping:
            try:
                loop()
            except Exception:
                self.stats["internal_errors"] += 1
                log.exception("data path error")
                time.sleep(0.01)

    # Data path.

    def _data_path(self) -> None:
        tun = self._tun
        frame = bytearray(TUN_FRAME_BYTES)
        view = memoryview(frame)
        buffers = [bytearray(RECEIVE_BUFFER_BYTES) for _ in range(INBOUND_BUFFERS)]
        views = [memoryview(b) for b in buffers]
        poller = select.poll()
        poller.register(tun.fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        polled: UdpSocket | None = None
        polled_fd = -1
        while not self._stopping:
            udp = self._udp
            busy = self._pump_tun(frame, view) | self._pump_udp(udp, buffers, views)
            if busy:
                continue
            if udp is not polled:  # first round, or a new socket after a listen port change
                if polled is not None:
                    poller.unregister(polled_fd)
                polled, polled_fd = udp, udp.fileno()
                poller.register(polled_fd, select.POLLIN)
            poller.poll(_POLL_MS)

    def _pump_tun(self, frame: bytearray, view: memoryview) -> bool:
        """Read up to a batch of packets from TUN and send them; False if there was nothing."""
        tun = self._tun
        packets: list[Packet] = []
        reads = 0
        try:
            while len(packets) < OUTBOUND_BATCH:
                if tun.offload:
                    packets += split_frame(view[: tun.read_into(frame)])
                else:
                    packets.append(os.read(tun.fd, TUN_FRAME_BYTES))
                reads += 1
        except BlockingIOError:
            if not reads:
                return False
        self.stats["tun_reads"] += reads
        self.stats["tun_packets"] += len(packets)
        self._send(packets)
        return True

    def _send(self, packets: Sequence[Packet]) -> None:
        now = self._clock()
        with self._lock:
            datagrams = self._device.seal_packets(packets, now)
        if datagrams:
            self._udp.send(datagrams)

    def _pump_udp(self, udp: UdpSocket, buffers: list[bytearray], views: list[memoryview]) -> bool:
        """Receive up to a batch of datagrams and handle them; False if there was nothing."""
        received: list[tuple[bytes | memoryview, int, Endpoint]] = []  # (data, GRO segment size or 0, source)
        count = used = 0
        try:
            while count < INBOUND_BATCH and used < INBOUND_BUFFERS:
                n, size, addr = udp.recv_into(buffers[used])
                view = views[used][:n]
                if 0 < size < n:  # a GRO batch (one flow, equal sizes): it stays in this buffer
                    received.append((view, size, addr))
                    count += -(-n // size)
                    used += 1
                else:  # one datagram: copy it out and reuse the buffer
                    received.append((bytes(view), 0, addr))
                    count += 1
        except BlockingIOError:
            pass
        except OSError:  # the socket was replaced (listen port change) or shut down
            if udp is self._udp and not self._stopping:
                raise
            return True
        if not received:
            return False
        self.stats["udp_batches"] += 1
        self.stats["udp_datagrams"] += count
        self._receive(received)
        return True

    def _receive(self, received: list[tuple[bytes | memoryview, int, Endpoint]]) -> None:
        """GRO batches of one session take the core's batch path; the rest go one by one (in
        arrival order either way). Packets for TUN stay grouped by GRO batch: a batch is
        usually one TCP run, which coalesce then recognises whole."""
        now = self._clock()
        groups: list[list[bytes]] = []
        datagrams: list[Datagram | DatagramBatch] = []
        singles: list[tuple[bytes | memoryview, Endpoint]] = []
        with self._lock:
            device = self._device
            for data, size, addr in received:
                if not size:  # a lone datagram, already copied out
                    singles.append((data, addr))
                    continue
                assert isinstance(data, memoryview)
                opened = device.receive_batch_untrusted(data, size, addr, now)
                if opened is None:
                    # Handshake messages are copied out of a GRO buffer: it is reused.
                    singles += [(d if d[0] == _TRANSPORT else bytes(d), addr) for d in segments(data, size)]
                    continue
                if singles:
                    groups.append(_sort(device.receive_datagrams_untrusted(singles, now), datagrams))
                    singles = []
                groups.append(opened[0])
                datagrams += opened[1]
            if singles:
                groups.append(_sort(device.receive_datagrams_untrusted(singles, now), datagrams))
        if datagrams:
            self._udp.send(datagrams)
        for packets in groups:
            self._write_tun(packets)

    def _write_tun(self, packets: list[bytes]) -> None:
        tun = self._tun
        frames = coalesce(packets) if tun.offload else [[p] for p in packets]
        self.stats["tun_writes"] += len(frames)
        for frame in frames:
            if not tun.write(frame):
                self.stats["tun_write_errors"] += 1

    def _timers(self) -> None:
        next_mtu_check = 0.0
        while not self._stopping:
            now = self._clock()
            with self._lock:
                deadline = self._device.get_timer()
            timeout = TIMER_TICK if deadline is None else min(max(deadline - now, 0.0), TIMER_TICK)
            if self._timer_wake.wait(timeout):
                self._timer_wake.clear()
            if self._stopping:
                return
            now = self._clock()
            with self._lock:
                self._device.handle_timer(now)
                datagrams = self._device.datagrams_to_send(now)
            if datagrams:
                self._udp.send(datagrams)
            if now >= next_mtu_check:
                next_mtu_check = now + MTU_CHECK_INTERVAL
                self._follow_mtu()

    def _follow_mtu(self) -> None:
        """The device pads to the MTU, and TSO frames must fit one GSO send: follow `ip link`."""
        tun = self._tun
        try:
            mtu = tun.mtu
            if mtu != self._mtu and tun.offload:
                tun.limit_segments(max_gso_segments(mtu + TRANSPORT_OVERHEAD))
        except KernelError as e:
            log.warning("%s", e)
            return
        self._mtu = mtu
        with self._lock:
            self._device.mtu = mtu

    # Configuration (UAPI).

    def get_state(self) -> DeviceState:
        with self._lock:
            statuses = self._device.peer_statuses()
            private_key = self._device.private_key
        peers = tuple(
            PeerState(
                public_key=s.public_key,
                preshared_key=s.preshared_key,
                endpoint=from_socket(s.endpoint) if s.endpoint is not None else None,
                last_handshake_ns=0 if s.last_handshake is None else round(s.last_handshake * 1e9),
                rx_bytes=s.rx_bytes,
                tx_bytes=s.tx_bytes,
                persistent_keepalive=s.persistent_keepalive,
                allowed_ips=s.allowed_ips,
            )
            for s in statuses
        )
        udp = self._udp
        return DeviceState(private_key=private_key, listen_port=udp.port, fwmark=udp.fwmark, peers=peers)

    def apply(self, request: SetRequest) -> None:
        """Apply a UAPI set. Everything that can be refused is checked (or, for the socket,
        done) before the device changes, so a refused request changes nothing."""
        with self._config_lock:
            endpoints = self._check_peers(request.peers)
            if request.listen_port is not None and request.listen_port != self._udp.port:
                self._rebind(request.listen_port, request.fwmark)
            elif request.fwmark is not None and request.fwmark != self._udp.fwmark:
                try:
                    self._udp.set_fwmark(request.fwmark)
                except KernelError as e:
                    raise UapiError(errno.EPERM, str(e)) from None
            with self._lock:
                now = self._clock()
                if request.private_key is not None:
                    self._set_private_key(request.private_key, now)
                if request.replace_peers:
                    for status in self._device.peer_statuses():
                        self._device.remove_peer(status.public_key)
                for update, endpoint in zip(request.peers, endpoints):
                    apply_peer_update(self._device, update, endpoint, now)
        self._timer_wake.set()  # send what the change queued (keepalives, handshakes)

    def _check_peers(self, updates: Sequence[PeerUpdate]) -> list[Endpoint | None]:
        """Refuse low-order keys and endpoints this socket cannot reach; socket addresses out."""
        endpoints: list[Endpoint | None] = []
        checked: set[bytes] = set()  # one X25519 per key, however many sections name it
        for update in updates:
            key = update.public_key
            if not update.remove and key not in checked:
                if crypto.is_low_order(key):
                    raise UapiError(errno.EINVAL, f"peer {key.hex()[:8]}...: low-order public key")
                checked.add(key)
            try:
                endpoints.append(None if update.endpoint is None else self._udp.to_socket(*update.endpoint))
            except KernelError as e:
                raise UapiError(errno.EAFNOSUPPORT, str(e)) from None
        return endpoints

    def _rebind(self, port: int, fwmark: int | None) -> None:
        old = self._udp
        try:
            new = UdpSocket(port, old.fwmark if fwmark is None else fwmark)
        except KernelError as e:
            raise UapiError(errno.EADDRINUSE, str(e)) from None
        self._udp = new  # sessions stay: peers learn the new port from our next packet
        old.close()

    def _set_private_key(self, key: bytes, now: float) -> None:
        device = self._device
        current = device.private_key
        if crypto.constant_time_equal(key, ZERO_KEY):
            if current is not None:
                device.set_private_key(None, now)
        elif current is None or not crypto.constant_time_equal(key, current):  # same key again: keep sessions
            device.set_private_key(key, now)  # stored as given, as wireguard-go (X25519 clamps itself)


def _sort(outputs: list[Output], datagrams: list[Datagram | DatagramBatch]) -> list[bytes]:
    """The packets for TUN among `outputs`; datagrams to send go to `datagrams`."""
    packets = []
    for output in outputs:
        if isinstance(output, TunPacket):
            packets.append(output.data)
        else:
            datagrams.append(output)
    return packets


def apply_peer_update(device: Device, update: PeerUpdate, endpoint: Endpoint | None, now: float) -> None:
    """One `public_key=` section of a UAPI set on the core Device, with wireguard-go's meaning
    (see Device.update_peer); a section for our own public key is ignored. `endpoint` is
    `update.endpoint` as a socket address. Costs what the section says, not what the peer has,
    so many sections for one peer stay linear."""
    key = update.public_key
    if key == device.public_key:
        return
    exists = device.has_peer(key)
    if update.remove:
        if exists:
            device.remove_peer(key)
        return
    if not exists and update.update_only:
        return
    device.update_peer(
        key, now, preshared_key=update.preshared_key, endpoint=endpoint,
        persistent_keepalive=update.persistent_keepalive, allowed_ips=update.allowed_ips,
        replace_allowed_ips=update.replace_allowed_ips,
    )
