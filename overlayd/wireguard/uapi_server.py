"""The UAPI socket (/var/run/wireguard/IFNAME.sock): the server in overlayd-wg, and a client.

`wg` finds userspace interfaces by that path (fixed at its build time), so the default
directory must stay for `wg` to work; WG_SOCKET_DIR or --socket-dir move it for other users.

Client use (what the overlayd daemon does after starting `overlayd-wg IFNAME`):

    client = UapiClient("wg0")
    client.wait_ready(timeout=5)
    client.set(SetRequest(private_key=key, listen_port=51820))
    client.set(SetRequest(peers=(PeerUpdate(public_key=pk, endpoint=(ip, 51820),
                                            replace_allowed_ips=True, allowed_ips=(net,)),)))
    state = client.get()  # DeviceState: peers with endpoints, counters, last handshakes

The client sends nothing (least of all a private key) to a socket whose listener runs as
neither root nor its own user (SO_PEERCRED), or that lies in a directory anyone else can write.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

from overlayd.errors import ConflictError, KernelError, NotFoundError
from overlayd.wireguard.errors import UntrustedSocketError
from overlayd.wireguard.uapi import (
    MAX_LINE_BYTES,
    MAX_REQUEST_BYTES,
    DeviceState,
    SetRequest,
    UapiError,
    format_counters,
    format_errno,
    format_get,
    format_set,
    parse_counters_untrusted,
    parse_get_untrusted,
    parse_set_untrusted,
    parse_status_untrusted,
)

log = logging.getLogger(__name__)

DEFAULT_SOCKET_DIR = Path("/var/run/wireguard")
SOCKET_DIR_ENV = "WG_SOCKET_DIR"
CONNECTION_TIMEOUT = 10.0  # a client that stalls longer than this mid-request is dropped
ENOANO = 55  # wireguard-go's "unknown error" code


def default_socket_dir() -> Path:
    return Path(os.environ.get(SOCKET_DIR_ENV) or DEFAULT_SOCKET_DIR)


def socket_path(ifname: str, directory: Path | None = None) -> Path:
    return (directory or default_socket_dir()) / f"{ifname}.sock"


class Configurable(Protocol):
    """What the server configures: the Engine, or a fake in tests."""

    def get_state(self) -> DeviceState: ...

    def apply(self, request: SetRequest) -> None: ...

    def counters(self) -> dict[str, int]: ...


def serve_connection(stream: BinaryIO, target: Configurable) -> None:
    """Answer requests on one connection until the client closes it (as wireguard-go does)."""
    while True:
        op = stream.readline(MAX_LINE_BYTES)
        if op == b"get=1\n":
            if stream.read(1) != b"\n":
                answer = format_errno(errno.EINVAL)
            else:
                answer = _answer(lambda: format_get(target.get_state()))
        elif op == b"get_counters=1\n":
            # An overlayd extension the `wg` tool never sends: data-path and drop counters,
            # so the daemon can export them while the engine runs in its own process.
            if stream.read(1) != b"\n":
                answer = format_errno(errno.EINVAL)
            else:
                answer = _answer(lambda: format_counters(target.counters()))
        elif op == b"set=1\n":
            body = _read_request(stream)
            if body is None:
                return
            answer = _answer(lambda: _set(target, body))
        else:  # EOF, or an operation we do not know: hang up
            return
        stream.write(answer.encode())
        stream.flush()


def _set(target: Configurable, body: bytes) -> str:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise UapiError(errno.EINVAL, "request is not UTF-8") from None
    target.apply(parse_set_untrusted(text))
    return format_errno(0)


def _answer(work: Callable[[], str]) -> str:
    try:
        return work()
    except UapiError as e:
        log.warning("UAPI request refused: %s", e)
        return format_errno(e.errno)
    except Exception:  # a bug must not take the interface down: report it to the client
        log.exception("UAPI request failed")
        return format_errno(ENOANO)


def _read_request(stream: BinaryIO) -> bytes | None:
    """Lines through the blank one; None if the client vanished or sent too much."""
    lines = []
    size = 0
    while True:
        line = stream.readline(MAX_LINE_BYTES)
        if not line.endswith(b"\n"):
            return None
        lines.append(line)
        size += len(line)
        if line == b"\n":
            return b"".join(lines)
        if size > MAX_REQUEST_BYTES:
            return None


class UapiServer:
    """Listens on the socket path; one short-lived thread per connection."""

    def __init__(self, path: Path, target: Configurable) -> None:
        self.path = path
        self._target = target
        self._listener: socket.socket | None = None
        self._inode: int | None = None

    def open(self) -> None:
        """Bind the socket (owner only, in a 0755 directory); a stale one is replaced, a live one refused."""
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if _is_live(self.path):
            raise ConflictError(f"{self.path} is in use: is the interface already running?")
        self.path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o077)  # the socket hands out private keys: root only
        try:
            listener.bind(str(self.path))
        except OSError as e:
            listener.close()
            raise KernelError(f"cannot bind {self.path}: {e.strerror}") from None
        finally:
            os.umask(old_umask)
        listener.listen(16)
        listener.setblocking(False)
        self._listener = listener
        self._inode = self.path.stat().st_ino

    def serve_until(self, wake_fd: int) -> None:
        """Accept connections until `wake_fd` becomes readable."""
        assert self._listener is not None, "open() first"
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(wake_fd, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj == wake_fd:
                        return
                    self._accept()

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(True)
        conn.settimeout(CONNECTION_TIMEOUT)
        threading.Thread(target=self._serve, args=(conn,), name="wg-uapi", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            try:
                serve_connection(stream, self._target)
            except OSError:  # the client went away or stalled
                pass

    def close(self) -> None:
        """Stop listening and remove the socket file if it is still ours."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        try:
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass


def _is_live(path: Path) -> bool:
    """Whether a process answers on the socket at `path` (a stale file gets ECONNREFUSED)."""
    try:
        if not stat.S_ISSOCK(path.stat().st_mode):
            return False
    except FileNotFoundError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


class UapiClient:
    """Talks to a running interface (ours or wireguard-go) over its UAPI socket."""

    def __init__(self, ifname: str, socket_dir: Path | None = None, *, timeout: float = 5.0) -> None:
        self.path = socket_path(ifname, socket_dir)
        self.timeout = timeout

    def get(self) -> DeviceState:
        return parse_get_untrusted(self._exchange("get=1\n\n"))

    def counters(self) -> dict[str, int]:
        """overlayd-wg's counters (drop_<reason>, ...); UapiError from wireguard-go, which has none."""
        return parse_counters_untrusted(self._exchange("get_counters=1\n\n"))

    def set(self, request: SetRequest) -> None:
        """Apply a set request; raises UapiError with the errno the device answered."""
        parse_status_untrusted(self._exchange(format_set(request)))

    def wait_ready(self, timeout: float = 10.0) -> DeviceState:
        """Poll until the interface answers a get (right after starting `overlayd-wg`)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.get()
            except NotFoundError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _exchange(self, request: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            try:
                _check_directory(self.path.parent)
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError) as e:
                raise NotFoundError(f"no WireGuard interface answers on {self.path}: {e.strerror}") from None
            _check_listener(sock, self.path)
            try:
                sock.sendall(request.encode())
                sock.shutdown(socket.SHUT_WR)  # one request per connection: EOF ends the exchange
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
                    if sum(map(len, chunks)) > MAX_REQUEST_BYTES:
                        raise UapiError(errno.EMSGSIZE, "answer too large")
            except OSError as e:
                raise UapiError(e.errno or errno.EIO, f"UAPI exchange on {self.path} failed: {e}") from None
        try:
            return b"".join(chunks).decode("utf-8")
        except UnicodeDecodeError:
            raise UapiError(errno.EPROTO, "answer is not UTF-8") from None


_UCRED = struct.Struct("=iII")  # pid, uid, gid


def _trusted_uids() -> set[int]:
    return {0, os.geteuid()}


def _check_directory(directory: Path) -> None:
    """The socket's directory must be root's (or ours) and writable by nobody else: whoever can
    write there can put their own socket in the engine's place."""
    info = directory.stat()
    if info.st_uid not in _trusted_uids() or info.st_mode & 0o022:
        raise UntrustedSocketError(
            f"refusing UAPI socket directory {directory}: owner uid {info.st_uid}, mode "
            f"{stat.S_IMODE(info.st_mode):o} (it must belong to root and be writable by no one else)")


def _check_listener(sock: socket.socket, path: Path) -> None:
    """SO_PEERCRED: the process that listens on the socket must run as root or as us."""
    pid, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    if uid not in _trusted_uids():
        raise UntrustedSocketError(f"refusing UAPI socket {path}: it is held by pid {pid} running as uid {uid}")
