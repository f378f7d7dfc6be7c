"""The control process's end of one worker's pipe (worker.py has the other).

Writes go through a thread of their own: the control's data path reads the worker's reports
and must never block on a worker that is slow to read (two processes blocked writing into
full pipes would hang the interface). Snapshots not yet written are merged into one, so one
waits to be sent, whatever the worker's lag; passed sockets (after a listen port change) go in
order, before it. Datagrams for the worker's sessions that reached the control (plane.py) go
after any snapshot waiting with them (one that outruns its session's snapshot waits for it in
the worker, as any datagram does), at most LINK_DATAGRAMS waiting; the engine counts the rest
as `forward_overflow`.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import multiprocessing.process
import os
import threading
from multiprocessing.reduction import send_handle

from overlayd.wireguard.events import Endpoint
from overlayd.wireguard.plane import PlaneSnapshot, merge

log = logging.getLogger(__name__)

LINK_DATAGRAMS = 1024  # forwarded datagrams waiting for a slow worker; more are dropped


class WorkerLink:
    def __init__(self, process: multiprocessing.process.BaseProcess,
                 conn: multiprocessing.connection.Connection) -> None:
        self.process = process
        self.conn = conn
        self._ready = threading.Condition()
        self._snapshot: PlaneSnapshot | None = None
        self._sockets: list[int] = []  # our duplicates of descriptors to hand over
        self._datagrams: list[tuple[bytes, Endpoint]] = []
        self._closing = False
        self._writer = threading.Thread(target=self._write, name=f"wg-link-{process.name}", daemon=True)

    def start(self) -> None:
        self._writer.start()

    def post_snapshot(self, snapshot: PlaneSnapshot) -> None:
        with self._ready:
            self._snapshot = snapshot if self._snapshot is None else merge(self._snapshot, snapshot)
            self._ready.notify()

    def post_datagrams(self, datagrams: list[tuple[bytes, Endpoint]]) -> int:
        """Hand the worker datagrams of its sessions; returns how many did not fit."""
        with self._ready:
            room = LINK_DATAGRAMS - len(self._datagrams)
            self._datagrams += datagrams[:room]
            self._ready.notify()
        return max(0, len(datagrams) - room)

    def post_socket(self, fd: int) -> None:
        """Hand the worker a socket; the caller keeps its own descriptor."""
        with self._ready:
            self._sockets.append(os.dup(fd))
            self._ready.notify()

    def close(self, timeout: float) -> None:
        """Tell the worker to stop, wait up to `timeout` for it, then kill it."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._writer.join(timeout)
        self.process.join(timeout)
        if self.process.is_alive():
            log.warning("%s did not stop in %.0f s: killing it", self.process.name, timeout)
            self.process.kill()
            self.process.join()
        self.conn.close()

    def _write(self) -> None:
        while True:
            with self._ready:
                while self._snapshot is None and not self._sockets and not self._datagrams and not self._closing:
                    self._ready.wait()
                sockets, self._sockets = self._sockets, []
                snapshot, self._snapshot = self._snapshot, None
                datagrams, self._datagrams = self._datagrams, []
                closing = self._closing
            try:
                for fd in sockets:
                    self.conn.send(("socket",))
                    send_handle(self.conn, fd, self.process.pid)
                if snapshot is not None:
                    self.conn.send(snapshot)
                if datagrams:
                    self.conn.send(("datagrams", datagrams))
                if closing:
                    self.conn.send(None)
            except OSError:  # the worker is gone: the data path sees its pipe close
                closing = True
            finally:
                for fd in sockets:
                    os.close(fd)
            if closing:
                return
