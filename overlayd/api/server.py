"""The control socket: a Unix stream socket speaking line-delimited JSON.

Mode 0660 and a peer-credential check keep it to root (and an optional group).
Every failure is answered with one clear error line; nothing a client sends can
take the server down, and neither can running out of file descriptors.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import trio

from overlayd.api import protocol
from overlayd.api.commands import COMMANDS, ControlPlane, dispatch
from overlayd.errors import OverlaydError, UsageError
from overlayd.metrics.daemon import REFUSED_MALFORMED, REFUSED_OVERSIZED, REFUSED_TIMEOUT, REFUSED_UID

log = logging.getLogger(__name__)

_SO_PEERCRED = getattr(socket, "SO_PEERCRED", 17)
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13; not in Python 3.11's socket module
_NGROUPS_MAX = 65536
_REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request line
# accept() failing for lack of descriptors or memory: the connection stays queued, so wait a
# little (a busy loop would not free anything) and try again.
_ACCEPT_STARVED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_BACKOFF = 0.1


class Refused(UsageError):
    """A request turned away before any command ran; `reason` is its overlayd_control_refusals_total label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def peer_uid(sock: socket.socket | trio.socket.SocketType) -> int:
    return peer_credentials(sock)[0]


def peer_credentials(sock: socket.socket | trio.socket.SocketType) -> tuple[int, int]:
    """The peer's (uid, gid) as of its connect()."""
    creds = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, gid = struct.unpack("3i", creds)
    return uid, gid


def peer_groups(sock: socket.socket | trio.socket.SocketType) -> frozenset[int]:
    """The peer's supplementary groups as of its connect() (no /proc lookup, so no pid reuse race)."""
    for count in (64, _NGROUPS_MAX):
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * count)
        except OSError as exc:
            if exc.errno == errno.ERANGE:  # more groups than fit: ask again with room for all
                continue
            raise
        return frozenset(struct.unpack(f"{len(raw) // 4}I", raw))
    return frozenset()


async def _read_line(stream: trio.SocketStream) -> bytes:
    buffer = bytearray()
    while b"\n" not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        buffer += chunk
        if len(buffer) > protocol.MAX_REQUEST_BYTES:
            raise Refused(REFUSED_OVERSIZED, f"request larger than {protocol.MAX_REQUEST_BYTES} bytes")
    return bytes(buffer).split(b"\n", 1)[0]


class ControlServer:
    def __init__(self, path: Path, plane: ControlPlane, *, allowed_uids: frozenset[int] = frozenset({0}),
                 group: int | None = None, on_refused: Callable[[str], None] = lambda reason: None) -> None:
        self.path = path
        self.on_refused = on_refused  # told each refusal's reason (the daemon counts them)
        self.plane = plane
        self.allowed_uids = allowed_uids | {os.getuid()}
        self.group = group
        self.refused = 0
        self.accept_failures = 0  # accept() calls that failed for lack of descriptors or memory
        self._inode: int | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = self._bind()
        try:
            task_status.started()
            async with trio.open_nursery() as nursery:
                while True:
                    sock = await self._accept(listener)
                    nursery.start_soon(self._handle, trio.SocketStream(sock))
        finally:
            listener.close()
            # Remove the socket only if it is still ours (a newer daemon may have replaced it).
            try:
                if self.path.stat().st_ino == self._inode:
                    self.path.unlink()
            except FileNotFoundError:
                pass

    async def _accept(self, listener: trio.socket.SocketType) -> trio.socket.SocketType:
        """The next connection; waits out a shortage of descriptors, logging once per shortage."""
        starved_since = self.accept_failures
        while True:
            try:
                sock, _ = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_STARVED:
                    raise
                if self.accept_failures == starved_since:
                    log.warning("control socket: cannot accept connections (%s: out of file descriptors or "
                                "memory); retrying every %gs", os.strerror(exc.errno), _ACCEPT_BACKOFF)
                self.accept_failures += 1
                await trio.sleep(_ACCEPT_BACKOFF)
                continue
            if self.accept_failures != starved_since:
                log.info("control socket: accepting again after %d failed attempts",
                         self.accept_failures - starved_since)
            return sock

    def _allowed(self, sock: trio.socket.SocketType) -> bool:
        uid, gid = peer_credentials(sock)
        if uid in self.allowed_uids:
            return True
        return self.group is not None and (gid == self.group or self.group in peer_groups(sock))

    def _bind(self) -> trio.socket.SocketType:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        old_umask = os.umask(0o117)  # 0660 from the first moment the socket exists
        try:
            sock.bind(str(tmp))
        finally:
            os.umask(old_umask)
        if self.group is not None:
            os.chown(tmp, -1, self.group)
        os.replace(tmp, self.path)  # atomic: clients never see a missing socket on restart
        self._inode = self.path.stat().st_ino
        sock.listen(64)
        return trio.socket.from_stdlib_socket(sock)

    async def _read_request(self, stream: trio.SocketStream) -> tuple[str, dict]:
        """The request's command and arguments, or Refused with the reason."""
        if not self._allowed(stream.socket):
            uid = peer_uid(stream.socket)
            log.warning("control socket: refused request from uid %d", uid)
            raise Refused(REFUSED_UID, f"uid {uid} may not use this socket")
        try:
            with trio.fail_after(_REQUEST_TIMEOUT):
                line = await _read_line(stream)
        except trio.TooSlowError:
            raise Refused(REFUSED_TIMEOUT, "request not received in time") from None
        try:
            cmd, args = protocol.decode_request_untrusted(line)
        except UsageError as exc:
            raise Refused(REFUSED_MALFORMED, str(exc)) from None
        if cmd not in COMMANDS:
            raise Refused(REFUSED_MALFORMED, f"unknown command {cmd!r}; known: {', '.join(sorted(COMMANDS))}")
        return cmd, args

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                cmd, args = await self._read_request(stream)
                result = await dispatch(self.plane, cmd, args)
                reply = protocol.encode_reply(result)
            except Refused as exc:
                self.refused += 1
                self.on_refused(exc.reason)
                reply = protocol.encode_error(exc)
            except OverlaydError as exc:
                reply = protocol.encode_error(exc)
            except trio.BrokenResourceError:
                return
            except Exception as exc:  # a bug must not kill the daemon; log it, answer, go on
                log.exception("control command failed")
                reply = protocol.encode_error(OverlaydError(f"internal error: {exc}"))
            try:
                await stream.send_all(reply)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
