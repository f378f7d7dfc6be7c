"""The data path loop of one process: a TUN queue and a UDP socket around a core (the Device in
the control process, a WorkerPlane in a worker), both directions in one thread.

TUN -> frames (64 KiB TCP super-packets with offload) cut into segments -> `seal_packets`
(sealed back to back in one buffer per GSO send) -> UDP GSO sends (one syscall per run of up to
64 datagrams to one peer); UDP GRO receives (several at once) -> `receive_batch_untrusted` per
GRO batch of one session (else `receive_datagrams_untrusted`) -> TCP segments glued back
together -> one TUN write per super-packet.

After each round one poll(0) says which side has more; it sleeps in poll() when neither has,
after a lone packet only once they have been empty for `busy_poll` seconds. Other file
descriptors (the pipes between control and workers) are served when poll reports them.

The first round after a quiet spell takes one read or receive per ready side: a lone packet
(a ping, a request, its answer) then costs no read that fails, which on a cold CPU is a good
part of a round trip. A side that is still ready after it is busy, and goes back to batches.
"""

from __future__ import annotations

import collections
import os
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from overlayd.wireguard.events import Datagram, DatagramBatch, Endpoint, Output, Packet, TunPacket
from overlayd.wireguard.offload import coalesce, split_frame
from overlayd.wireguard.tun import TunDevice
from overlayd.wireguard.udp import RECEIVE_BUFFER_BYTES, UdpSocket, segments

OUTBOUND_BATCH = 64  # packets taken from TUN before sealing them in one locked call
INBOUND_BATCH = 64  # datagrams taken from UDP before opening them in one locked call
INBOUND_BUFFERS = 8  # 64 KiB receive buffers (a GRO receive keeps its buffer until handled)
TUN_FRAME_BYTES = 65536 + 1024
LONE_PACKETS = 2  # a round with at most this many packets is request/response traffic: busy-poll after it
_TRANSPORT = 4
_POLL_MS = 1000


class Core(Protocol):
    """The data path methods of Device and WorkerPlane."""

    def seal_packets(self, packets: list[Packet], now: float) -> list[Datagram | DatagramBatch]: ...

    def receive_batch_untrusted(self, data: memoryview, size: int, addr: Endpoint, now: float
                                ) -> tuple[list[bytes], list[Datagram | DatagramBatch]] | None: ...

    def receive_datagrams_untrusted(self, datagrams: list[tuple[bytes | memoryview, Endpoint]],
                                    now: float) -> list[Output]: ...


class DataPath:
    def __init__(self, tun: TunDevice, udp: UdpSocket, core: Core, lock: threading.Lock, *,
                 clock: Callable[[], float], busy_poll: float, stats: collections.Counter[str],
                 after_core: Callable[[], None] = lambda: None) -> None:
        """`lock` guards `core` (taken once per batch); `after_core` runs after each batch the
        core handled, before its output is sent (the control publishes session changes there)."""
        self.tun = tun
        self.udp = udp  # replaced on a listen port change
        self.core = core
        self._lock = lock
        self._clock = clock
        self._busy_poll = busy_poll
        self.stats = stats
        self._after_core = after_core
        self.stopping = False

    def run(self, stop_fd: int, side: dict[int, Callable[[], None]],
            on_idle: Callable[[], None] = lambda: None) -> None:
        """Until `stopping`: move packets; call side[fd]() when fd is readable, and on_idle()
        before each sleep."""
        tun = self.tun
        tun_fd = tun.fd
        frame = bytearray(TUN_FRAME_BYTES)
        view = memoryview(frame)
        buffers = [bytearray(RECEIVE_BUFFER_BYTES) for _ in range(INBOUND_BUFFERS)]
        views = [memoryview(b) for b in buffers]
        poller = select.poll()
        for fd in (tun_fd, stop_fd, *side):
            poller.register(fd, select.POLLIN)
        polled: UdpSocket | None = None
        polled_fd = -1
        clock = time.perf_counter
        busy_poll = self._busy_poll
        last_busy = 0.0
        spin = False
        tun_ready = udp_ready = True  # the first round looks at both
        lone = False  # after a quiet spell: one read or receive per side (module docstring)
        while not self.stopping:
            udp = self.udp
            if udp is not polled:  # first round, or a new socket after a listen port change
                if polled is not None:
                    poller.unregister(polled_fd)
                polled, polled_fd = udp, udp.fileno()
                poller.register(polled_fd, select.POLLIN)
                udp_ready = True
            handled = (self.pump_tun(frame, view, 1 if lone else OUTBOUND_BATCH) if tun_ready else 0) + \
                (self.pump_udp(udp, buffers, views, 1 if lone else INBOUND_BATCH) if udp_ready else 0)
            if handled:
                last_busy = clock()
                spin = handled <= LONE_PACKETS
            # One poll says what is readable now. Trying a read and a receive instead costs two
            # syscalls that fail, each raising an exception, after every lone packet: on a cold
            # CPU that is a good part of a round trip.
            events = poller.poll(0)
            quiet = not events
            if quiet:
                lone = True
                if spin and clock() - last_busy < busy_poll:
                    # After a lone packet (a ping, a request), stay on the CPU a little: its
                    # answer usually comes within a round trip, and sleeping costs more than the
                    # packet (a wakeup, then a cache-cold interpreter). Not after bulk traffic,
                    # where the gaps are waits for the other end and spinning would only burn
                    # CPU. Yield so others on the core go first.
                    os.sched_yield()
                    tun_ready = udp_ready = False
                    continue
                on_idle()
                events = poller.poll(_POLL_MS)
            pumped_tun, pumped_udp = tun_ready, udp_ready
            tun_ready = udp_ready = False
            for fd, _ in events:
                if fd == tun_fd:
                    tun_ready = True
                elif fd == polled_fd:
                    udp_ready = True
                else:
                    handler = side.get(fd)
                    if handler is not None:
                        handler()
            if lone and not quiet and (tun_ready and pumped_tun or udp_ready and pumped_udp):
                lone = False  # more behind the one we took: a burst

    def pump_tun(self, frame: bytearray, view: memoryview, max_reads: int = OUTBOUND_BATCH) -> int:
        """Read up to a batch of packets (in at most `max_reads` reads) from TUN and send them;
        how many there were."""
        tun = self.tun
        packets: list[Packet] = []
        reads = 0
        try:
            while len(packets) < OUTBOUND_BATCH and reads < max_reads:
                if tun.offload:
                    packets += split_frame(view[: tun.read_into(frame)])
                else:
                    packets.append(os.read(tun.fd, TUN_FRAME_BYTES))
                reads += 1
        except BlockingIOError:
            if not reads:
                return 0
        self.stats["tun_reads"] += reads
        self.stats["tun_packets"] += len(packets)
        self.send(packets)
        return max(1, len(packets))  # a frame the cutter refused was still work

    def send(self, packets: list[Packet]) -> None:
        now = self._clock()
        with self._lock:
            datagrams = self.core.seal_packets(packets, now)
        self._after_core()
        if datagrams:
            self.udp.send(datagrams)

    def pump_udp(self, udp: UdpSocket, buffers: list[bytearray], views: list[memoryview],
                 max_receives: int = INBOUND_BATCH) -> int:
        """Receive up to a batch of datagrams (in at most `max_receives` receives) and handle
        them; how many there were."""
        received: list[tuple[bytes | memoryview, int, Endpoint]] = []  # (data, GRO segment size or 0, source)
        count = used = 0
        try:
            while count < INBOUND_BATCH and used < INBOUND_BUFFERS and len(received) < max_receives:
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
            if udp is self.udp and not self.stopping:
                raise
            return 1
        if not received:
            return 0
        self.stats["udp_batches"] += 1
        self.stats["udp_datagrams"] += count
        self.receive(received)
        return count

    def receive(self, received: list[tuple[bytes | memoryview, int, Endpoint]]) -> None:
        """GRO batches of one session take the core's batch path; the rest go one by one (in
        arrival order either way). Packets for TUN stay grouped by GRO batch: a batch is
        usually one TCP run, which coalesce then recognises whole."""
        now = self._clock()
        groups: list[list[bytes]] = []
        datagrams: list[Datagram | DatagramBatch] = []
        singles: list[tuple[bytes | memoryview, Endpoint]] = []
        with self._lock:
            core = self.core
            for data, size, addr in received:
                if not size:  # a lone datagram, already copied out
                    singles.append((data, addr))
                    continue
                assert isinstance(data, memoryview)
                opened = core.receive_batch_untrusted(data, size, addr, now)
                if opened is None:
                    # Handshake messages are copied out of a GRO buffer: it is reused.
                    singles += [(d if d[0] == _TRANSPORT else bytes(d), addr) for d in segments(data, size)]
                    continue
                if singles:
                    groups.append(sort_outputs(core.receive_datagrams_untrusted(singles, now), datagrams))
                    singles = []
                groups.append(opened[0])
                datagrams += opened[1]
            if singles:
                groups.append(sort_outputs(core.receive_datagrams_untrusted(singles, now), datagrams))
        self._after_core()
        if datagrams:
            self.udp.send(datagrams)
        for packets in groups:
            self.write_tun(packets)

    def emit(self, outputs: Sequence[Output]) -> None:
        """Send the datagrams and write the packets a core call outside this loop produced."""
        datagrams: list[Datagram | DatagramBatch] = []
        packets = sort_outputs(outputs, datagrams)
        if datagrams:
            self.udp.send(datagrams)
        if packets:
            self.write_tun(packets)

    def write_tun(self, packets: list[bytes]) -> None:
        tun = self.tun
        frames = coalesce(packets) if tun.offload else [[p] for p in packets]
        self.stats["tun_writes"] += len(frames)
        for frame in frames:
            if not tun.write(frame):
                self.stats["tun_write_errors"] += 1


def sort_outputs(outputs: Sequence[Output], datagrams: list[Datagram | DatagramBatch]) -> list[bytes]:
    """Packets for TUN out, datagrams appended to `datagrams`."""
    packets = []
    for output in outputs:
        if isinstance(output, TunPacket):
            packets.append(output.data)
        else:
            datagrams.append(output)
    return packets
