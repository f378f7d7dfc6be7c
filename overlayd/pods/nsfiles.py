"""Namespaces kept alive as files (bind mounts of nsfs), like `ip netns add`.

Entering or creating a namespace changes the calling thread, so that work runs
in a short-lived thread of its own: its namespaces end with it, and no thread
of the daemon ever has to be switched back (nor can be left stranded in a
pod). What outlives the thread is the bind mounts and a netlink socket, which
stays bound to the pod's network namespace from whichever thread uses it.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from overlayd.errors import KernelError
from overlayd.pods import nsutil
from overlayd.pods.rtnl import Rtnl

T = TypeVar("T")

_SELF_NS = "/proc/thread-self/ns"


def _in_own_thread(job: Callable[[], T], what: str) -> T:
    """Run `job` in a new thread that exits afterwards, and return its result or raise its error."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(job())
        except BaseException as exc:  # handed to the caller below
            error.append(exc)

    thread = threading.Thread(target=run, name=f"overlayd-ns-{what}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def make_pod_dir(path: Path) -> None:
    try:
        os.mkdir(path, 0o755)
    except OSError as exc:
        raise KernelError(f"cannot create {path}: {exc.strerror}") from exc


def create_placeholder(path: Path) -> None:
    """A new empty file to bind a namespace onto (an existing one is an error, as for `ip netns add`)."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    except OSError as exc:
        raise KernelError(f"cannot create {path}: {exc.strerror}") from exc


class NewNamespaces:
    """Fresh net, UTS and IPC namespaces, made by a thread of their own, to be bound onto files.

    The thread starts on construction and makes the namespaces (the costly part,
    ~0.5 ms) straight away, so that work overlaps whatever the caller does until
    bind(). Exactly one of bind() or abandon() must follow.
    """

    def __init__(self) -> None:
        self._order: queue.SimpleQueue[tuple[str, Path, Path, Path] | None] = queue.SimpleQueue()
        self._result: list[Rtnl] = []
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="overlayd-new-ns", daemon=True)
        self._thread.start()

    def bind(self, hostname: str, net: Path, uts: Path, ipc: Path) -> Rtnl:
        """Set the hostname and bind the namespaces onto three existing empty files.

        Returns a netlink socket inside the new network namespace; the caller closes it.
        """
        self._order.put((hostname, net, uts, ipc))
        self._thread.join()
        if self._error:
            raise self._error[0]
        return self._result[0]

    def abandon(self) -> None:
        """Let the namespaces go unbound: they vanish with the thread."""
        self._order.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:
            nsutil.unshare(nsutil.CLONE_NEWNET | nsutil.CLONE_NEWUTS | nsutil.CLONE_NEWIPC)
            order = self._order.get()
            if order is None:
                return
            hostname, *targets = order
            nsutil.sethostname(hostname)
            for kind, target in zip(("net", "uts", "ipc"), targets):
                nsutil.bind_mount(f"{_SELF_NS}/{kind}", str(target))
            self._result.append(Rtnl())
        except BaseException as exc:  # handed to bind()
            self._error.append(exc)


def call_in_netns(net: Path, job: Callable[[], T]) -> T:
    """Run `job` in a short-lived thread inside the network namespace bound at `net`.

    Sockets the job opens stay in that namespace, e.g. call_in_netns(path, Rtnl).
    """

    def enter_and_run() -> T:
        fd = os.open(net, os.O_RDONLY | os.O_CLOEXEC)
        try:
            nsutil.setns(fd, nsutil.CLONE_NEWNET)
        finally:
            os.close(fd)
        return job()

    return _in_own_thread(enter_and_run, "enter")


def remove_namespace_file(path: Path) -> None:
    """Detach the namespace bound at `path` (if any) and delete the file (if any)."""
    nsutil.umount2(str(path), missing_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise KernelError(f"cannot remove {path}: {exc.strerror}") from exc


def remove_dir(path: Path) -> None:
    """Remove an (expected empty) directory; absent is fine."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        hint = " (something else was left inside)" if exc.errno == errno.ENOTEMPTY else ""
        raise KernelError(f"cannot remove {path}: {exc.strerror}{hint}") from exc


class NsfsProbe:
    """Tells whether a path is a mounted namespace file (nsfs), not just a placeholder."""

    def __init__(self) -> None:
        self._nsfs_dev = os.stat(f"{_SELF_NS}/net").st_dev

    def is_namespace(self, path: Path) -> bool:
        try:
            return os.stat(path).st_dev == self._nsfs_dev
        except FileNotFoundError:
            return False
