"""The userspace WireGuard interface: a core Device behind a TUN device and a UDP socket,
optionally with worker processes that share the data path.

Threads of the control process, neither scheduling anything per packet:
- data: both directions in one loop (datapath.py);
- timers: sleeps until `Device.get_timer()` (at most TIMER_TICK), runs `handle_timer`, sends
  what `datagrams_to_send` hands over, and follows the TUN MTU.
UAPI get/set calls come from the caller's threads.

Why one data thread: the cryptography library keeps the GIL during AEAD (measured: two threads
sealing 64 KiB buffers take as long as one doing both), so a process runs Python on one core at
a time anyway, and with a thread per direction every TCP ACK going the other way cost a GIL
handoff, which cost more than handling the ACK (about 10% more throughput with one thread).
The core's Device is not thread-safe: every call into it holds `_lock` (taken once per batch;
the timer thread and UAPI calls are the only other takers).

More cores take worker processes (`workers` > 1): each has a queue of a multi-queue TUN device
and a socket of a SO_REUSEPORT group on the listen port. The kernel spreads outbound flows over
the queues, and steering.py gives each peer's transport messages to one worker (handshakes to
this process, which owns all protocol state and publishes sessions to the workers: plane.py).
"""

from __future__ import annotations

import collections
import errno
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence

from overlayd.errors import KernelError
from overlayd.wireguard import crypto, steering
from overlayd.wireguard.counters import CounterSpace
from overlayd.wireguard.datapath import DataPath
from overlayd.wireguard.device import Device
from overlayd.wireguard.events import Endpoint
from overlayd.wireguard.links import WorkerLink
from overlayd.wireguard.plane import WorkerReport
from overlayd.wireguard.tun import TunDevice
from overlayd.wireguard.uapi import ZERO_KEY, DeviceState, PeerState, PeerUpdate, SetRequest, UapiError
from overlayd.wireguard.udp import UdpSocket, from_socket, max_gso_segments
from overlayd.wireguard.worker import worker_main

log = logging.getLogger(__name__)

TIMER_TICK = 0.25  # a timer armed by the data path fires at most this late
MTU_CHECK_INTERVAL = 1.0
TRANSPORT_OVERHEAD = 32  # header and tag around an inner packet of at most MTU bytes
# Seconds the data thread keeps polling after a lone packet before it sleeps. Off: on 2 vCPUs
# 1 ms cut the ping through the tunnel by a fifth for three times the CPU per ping (README).
DEFAULT_BUSY_POLL = 0.0
COUNTER_SLOTS = 65536  # send keypairs alive at once with workers (3 per peer at most)
WORKER_STOP_TIMEOUT = 5.0
REPORTS_PER_ROUND = 16  # worker reports read per data path round, per worker


class Engine:
    """A running userspace WireGuard interface. Build it, `start()`, configure with `apply()`."""

    def __init__(
        self,
        tun: TunDevice,
        *,
        worker_queues: Sequence[TunDevice] = (),
        listen_port: int = 0,
        busy_poll: float = DEFAULT_BUSY_POLL,
        rng: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`worker_queues`: further queues of a multi-queue `tun`, one per worker process."""
        self._tun = tun
        self._worker_queues = list(worker_queues)
        self._shards = 1 + len(self._worker_queues)
        self._busy_poll = busy_poll
        self._rng = rng
        self._clock = clock
        self._lock = threading.Lock()  # guards _device
        self._config_lock = threading.Lock()  # one UAPI set at a time
        self._counters = CounterSpace(COUNTER_SLOTS) if self._shards > 1 else None
        # No identity until a UAPI set gives a private key: the device sends and accepts nothing.
        self._device = Device(None, rng=rng, mtu=tun.mtu, wall_offset=time.time() - clock(),
                              shards=self._shards, counters=self._counters)
        self._mtu = 0  # what _follow_mtu last saw
        self._group = self._open_group(listen_port, 0)  # [ours, worker 1's, ...]
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        self._timer_wake = threading.Event()
        self._threads: list[threading.Thread] = []
        # Per-batch counters (tun_reads, udp_sends, ...) and errors: logged at shutdown.
        self.stats: collections.Counter[str] = collections.Counter()
        self._path = DataPath(tun, self._group[0], self._device, self._lock, clock=clock, busy_poll=busy_poll,
                              stats=self.stats, after_core=self._after_core)
        self._workers: list[WorkerLink] = []
        self._publish_lock = threading.Lock()  # snapshots reach the workers in generation order
        self._published = -1  # the device generation the workers last got
        self.failure: str | None = None  # why the engine stopped on its own (a worker died)

    @property
    def _udp(self) -> UdpSocket:
        return self._group[0]

    # Lifecycle.

    def start(self) -> None:
        """Fork the workers (before any thread starts), then start the threads."""
        self._follow_mtu()
        self._start_workers()
        for name, target in (("data", self._data_path), ("timers", self._timers)):
            thread = threading.Thread(target=self._guard, args=(target,), name=f"wg-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _start_workers(self) -> None:
        if self._shards == 1:
            return
        assert self._counters is not None
        context = multiprocessing.get_context("fork")
        inherited = [self._tun.fd, self._stop_r, self._stop_w]
        for shard, queue in enumerate(self._worker_queues, start=1):
            ours, theirs = context.Pipe()
            others = [q.fd for q in self._worker_queues if q is not queue]
            others += [u.fileno() for i, u in enumerate(self._group) if i != shard]
            others += [link.conn.fileno() for link in self._workers]  # the pipes to earlier workers
            process = context.Process(
                target=worker_main, name=f"overlayd-wg worker {shard}", daemon=True,
                args=(shard, self._shards, queue, self._group[shard], theirs, self._counters, self._busy_poll,
                      inherited + others + [ours.fileno()]),
            )
            process.start()
            theirs.close()
            self._workers.append(WorkerLink(process, ours))
        for queue in self._worker_queues:  # theirs alone: a queue nobody reads would swallow flows
            queue.close()
        for link in self._workers:
            link.start()
        self._publish()
        log.info("%d worker process%s started", len(self._workers), "" if len(self._workers) == 1 else "es")

    def counters(self) -> dict[str, int]:
        """Data path counters and the core's drop counts (drop_<reason>), for logs and benchmarks."""
        with self._lock:
            drops = {f"drop_{reason}": n for reason, n in self._device.drops.items()}
        udp = self._udp
        return {**self.stats, "udp_sends": udp.sends, "udp_send_errors": udp.send_errors, **drops}

    def stop(self) -> None:
        """Stop the threads and workers and close the sockets; the caller closes the TUN device."""
        self._stopping = True
        self._path.stopping = True
        os.write(self._stop_w, b"x")
        self._timer_wake.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for link in self._workers:
            link.close(WORKER_STOP_TIMEOUT)
        for udp in self._group:
            udp.close()
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

    # Data path, and what the workers report.

    def _data_path(self) -> None:
        side = {link.conn.fileno(): (lambda link=link: self._from_worker(link)) for link in self._workers}
        self._path.run(self._stop_r, side)

    def _from_worker(self, link: WorkerLink) -> None:
        process, conn = link.process, link.conn
        try:
            # A bounded number per call: reports waiting behind them come in the next round, and
            # this thread's own UDP and TUN are served in between.
            for _ in range(REPORTS_PER_ROUND):
                if not conn.poll():
                    break
                report = conn.recv()
                if not isinstance(report, WorkerReport):
                    raise EOFError(f"unexpected message {type(report).__name__}")
                now = self._clock()
                self.stats["forwarded_from_workers"] += len(report.forwarded)
                with self._lock:
                    outputs = self._device.apply_report(report, now)
                self._after_core()
                self._path.emit(outputs)
        except (EOFError, OSError) as e:
            if self._stopping:
                return
            # A worker's flows and sessions cannot move to another process safely (its replay
            # windows die with it): stop, and let the service manager start us again.
            process.join(1.0)  # reap it, for its exit status
            code = process.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exited ({code if code is not None else e})"
            self.failure = f"{process.name} {how}"
            log.error("%s; stopping the interface", self.failure)
            self._path.stopping = True
            os.kill(os.getpid(), signal.SIGTERM)

    def _after_core(self) -> None:
        """After the device handled traffic: the workers hear what changed, and get the
        datagrams for their sessions that reached this process (plane.py)."""
        self._publish()
        if self._workers and self._device.has_forwarded:  # (read unlocked: a miss waits a batch)
            with self._lock:
                forwarded = self._device.take_forwarded()
            for shard, datagrams in forwarded.items():
                self.stats["forwarded_to_workers"] += len(datagrams)
                self.stats["forward_overflow"] += self._workers[shard - 1].post_datagrams(datagrams)

    def _publish(self) -> None:
        """Send the workers the peers that changed since they last heard (sessions, endpoint,
        allowed IPs), and the MTU."""
        if not self._workers or self._device.generation == self._published:
            return
        with self._publish_lock:
            with self._lock:
                if self._device.generation == self._published:
                    return
                snapshot = self._device.plane_update()
                self._published = snapshot.generation
            for link in self._workers:
                link.post_snapshot(snapshot)

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
            self._publish()
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
            if self._device.mtu != mtu:
                self._device.mtu = mtu
                self._device.generation += 1  # the workers pad to it too
        self._publish()

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
                    for udp in self._group:  # the workers' sockets are the same sockets
                        udp.set_fwmark(request.fwmark)
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
            self._publish()
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

    def _open_group(self, port: int, fwmark: int) -> list[UdpSocket]:
        """One socket per process on `port` (0: any), a reuseport group with steering if more."""
        if self._shards == 1:
            return [UdpSocket(port, fwmark)]
        if port:  # taken? A reuseport socket would quietly join another group on it instead
            UdpSocket(port, fwmark).close()
        group = [UdpSocket(port, fwmark, reuseport=True)]
        try:
            group += [UdpSocket(group[0].port, fwmark, reuseport=True) for _ in range(self._shards - 1)]
            steering.attach(group[0].sock, self._shards)
        except KernelError:
            for udp in group:
                udp.close()
            raise
        return group

    def _rebind(self, port: int, fwmark: int | None) -> None:
        old = self._group
        try:
            new = self._open_group(port, old[0].fwmark if fwmark is None else fwmark)
        except KernelError as e:
            raise UapiError(errno.EADDRINUSE, str(e)) from None
        for link, udp in zip(self._workers, new[1:]):
            link.post_socket(udp.fileno())
        self._group = new  # sessions stay: peers learn the new port from our next packet
        self._path.udp = new[0]
        for udp in old:
            udp.close()

    def _set_private_key(self, key: bytes, now: float) -> None:
        device = self._device
        current = device.private_key
        if crypto.constant_time_equal(key, ZERO_KEY):
            if current is not None:
                device.set_private_key(None, now)
        elif current is None or not crypto.constant_time_equal(key, current):  # same key again: keep sessions
            device.set_private_key(key, now)  # stored as given, as wireguard-go (X25519 clamps itself)


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
