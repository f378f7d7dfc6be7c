"""A worker process of overlayd-wg: one TUN queue and one socket of the port's reuseport group,
a WorkerPlane as its core (plane.py). Forked by the Engine; talks to it over a pipe:

control -> worker: a PlaneSnapshot after every change; ("socket",) followed by a passed file
descriptor after a listen port change; ("datagrams", [(data, source), ...]) for this worker's
sessions that reached the control (plane.py); None to stop.
worker -> control: WorkerReports, at most every REPORT_INTERVAL while busy, at once when
packets wait for a handshake, and before the worker sleeps.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing.connection
import os
import signal
import threading
import time
from multiprocessing.reduction import recv_handle

from overlayd.wireguard.counters import CounterSpace
from overlayd.wireguard.datapath import DataPath
from overlayd.wireguard.events import Endpoint
from overlayd.wireguard.plane import PlaneSnapshot, WorkerPlane, merge
from overlayd.wireguard.tun import TunDevice
from overlayd.wireguard.udp import UdpSocket

log = logging.getLogger(__name__)

REPORT_INTERVAL = 0.05  # seconds: timers and `wg show` lag the workers' traffic at most this
MESSAGES_PER_ROUND = 16  # from the control, per data path round


class Worker:
    def __init__(self, shard: int, shards: int, tun: TunDevice, udp: UdpSocket,
                 conn: multiprocessing.connection.Connection, counters: CounterSpace, busy_poll: float) -> None:
        self._conn = conn
        self._plane = WorkerPlane(shard, shards, counters)
        self._lock = threading.Lock()  # DataPath's contract; this process has one thread
        self._clock = time.monotonic
        self._next_report = 0.0
        self.stats: collections.Counter[str] = collections.Counter()
        self._path = DataPath(tun, udp, self._plane, self._lock, clock=self._clock, busy_poll=busy_poll,
                              stats=self.stats, after_core=self._report_if_due)

    def run(self) -> None:
        stop_r, _stop_w = os.pipe()  # never written: the worker stops when the control says so
        while not self._path.stopping:
            try:
                self._path.run(stop_r, {self._conn.fileno(): self._from_control}, on_idle=self._report)
            except (EOFError, OSError) as e:  # the control process is gone
                log.warning("worker %d: control pipe closed (%s), stopping", self._plane.shard, e)
                return
            except Exception:
                log.exception("worker data path error")
                time.sleep(0.01)

    def _from_control(self) -> None:
        snapshot: PlaneSnapshot | None = None  # those queued, merged into one
        forwarded: list[tuple[bytes, Endpoint]] = []
        for _ in range(MESSAGES_PER_ROUND):  # more wait for the next round: the data path goes first
            if not self._conn.poll():
                break
            message = self._conn.recv()
            if message is None:
                self._path.stopping = True
                return
            if isinstance(message, PlaneSnapshot):
                snapshot = message if snapshot is None else merge(snapshot, message)
            elif isinstance(message, tuple) and message[0] == "datagrams":
                forwarded += message[1]
            elif message == ("socket",):
                old = self._path.udp
                self._path.udp = UdpSocket.adopt(recv_handle(self._conn), old.fwmark)
                old.close()
        if snapshot is not None or forwarded:
            self._apply(snapshot, forwarded)

    def _apply(self, snapshot: PlaneSnapshot | None, forwarded: list[tuple[bytes, Endpoint]]) -> None:
        """Take the snapshot first (it may bring the forwarded datagrams' sessions), then open
        the datagrams the control forwarded."""
        now = self._clock()
        with self._lock:
            outputs = [] if snapshot is None else self._plane.apply(snapshot, now)
            outputs += self._plane.receive_datagrams_untrusted(forwarded, now, forward=False)
        self._path.emit(outputs)

    def _report_if_due(self) -> None:
        now = self._clock()
        if now >= self._next_report or self._plane.has_urgent():
            self._report()

    def _report(self) -> None:
        self._next_report = self._clock() + REPORT_INTERVAL
        with self._lock:
            report = self._plane.take_report()
        if report is not None:
            self._conn.send(report)


def worker_main(shard: int, shards: int, tun: TunDevice, udp: UdpSocket, conn: multiprocessing.connection.Connection,
                counters: CounterSpace, busy_poll: float, inherited: list[int]) -> None:
    """The forked process: drop what belongs to the control process, then serve."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the control, which stops us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        signal.set_wakeup_fd(-1)  # the control's wakeup pipe is not ours
    except ValueError:  # forked from a thread other than the main one: none was inherited
        pass
    for fd in inherited:
        try:
            os.close(fd)
        except OSError:
            pass
    worker = Worker(shard, shards, tun, udp, conn, counters, busy_poll)
    worker.run()
    log.info("worker %d stopping; counters: %s", shard, dict(worker.stats))
