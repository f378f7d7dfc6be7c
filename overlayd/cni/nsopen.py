"""Netlink sockets inside a runtime's network namespace, opened by one long-lived thread.

A socket belongs to the network namespace its creator was in, so opening one
inside a container's namespace means entering it. pods.nsfiles.call_in_netns
does that in a new thread per call (~130 us here: most of it starting and
joining the thread); this thread is started once and enters, opens and
returns for each call (~30 us). The calling threads never change namespace.
Should the way back ever fail, the thread hands over the socket (it is in the
right namespace) and ends, its namespace with it; the next call starts another.
"""

from __future__ import annotations

import os
import queue
import threading

from overlayd.errors import KernelError
from overlayd.pods import nsutil
from overlayd.pods.rtnl import Rtnl

_Order = tuple[int, "queue.SimpleQueue[Rtnl | BaseException]"]


class NetnsSockets:
    """open(netns_fd) -> an Rtnl inside that namespace; the constructing thread's namespace is home."""

    def __init__(self) -> None:
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._orders: queue.SimpleQueue[_Order | None] | None = None

    def open(self, netns_fd: int) -> Rtnl:
        """A netlink socket in the namespace `netns_fd` refers to (the caller keeps and closes the fd)."""
        reply: queue.SimpleQueue[Rtnl | BaseException] = queue.SimpleQueue()
        with self._lock:
            if self._home < 0:
                raise KernelError("CNI namespace helper is closed")
            if self._orders is None:
                self._orders = queue.SimpleQueue()
                threading.Thread(target=self._serve, args=(self._orders,), name="overlayd-cni-netns",
                                 daemon=True).start()
            self._orders.put((netns_fd, reply))
        result = reply.get()  # not under the lock: a helper that ends takes it to stop its queue
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        with self._lock:
            if self._orders is not None:
                self._orders.put(None)
                self._orders = None
            if self._home >= 0:
                os.close(self._home)
                self._home = -1

    def _serve(self, orders: queue.SimpleQueue[_Order | None]) -> None:
        try:
            nsutil.setns(self._home, nsutil.CLONE_NEWNET)  # wherever it was started from
        except KernelError as exc:
            self._quit(orders, exc)
            return
        while (order := orders.get()) is not None:
            netns_fd, reply = order
            try:
                nsutil.setns(netns_fd, nsutil.CLONE_NEWNET)
            except BaseException as exc:  # noqa: BLE001 (handed to the caller)
                reply.put(exc)
                continue
            try:
                result: Rtnl | BaseException = Rtnl()
            except BaseException as exc:  # noqa: BLE001 (handed to the caller)
                result = exc
            try:
                nsutil.setns(self._home, nsutil.CLONE_NEWNET)
            except KernelError:
                reply.put(result)  # made inside, so still right; but this thread is stranded: it ends
                self._quit(orders, KernelError("CNI namespace helper could not return home"))
                return
            reply.put(result)

    def _quit(self, orders: queue.SimpleQueue[_Order | None], error: BaseException) -> None:
        """Stop taking orders: the next open() starts another thread; orders given here meanwhile get `error`."""
        with self._lock:
            if self._orders is orders:
                self._orders = None
        while True:  # none can come after the reset
            try:
                order = orders.get_nowait()
            except queue.Empty:
                return
            if order is not None:
                order[1].put(error)
