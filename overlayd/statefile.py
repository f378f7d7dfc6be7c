"""Small JSON state files (address pools, node identity...) written atomically.

A reader sees the old file or the new one, never a torn write, even after a crash or power loss:
the data goes to a temporary file in the same directory, which is fsynced, renamed over the
target, and then the directory is fsynced so the rename itself is durable.

A writer killed mid-write leaves its temporary file behind (`.NAME.PID.HEX.tmp`). The first
read or write of NAME in a process removes such leftovers of NAME: those of processes that
are gone, and its own that it is not writing. Nothing else in the directory is touched.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from typing import Any

from overlayd.errors import OverlaydError


class StateError(OverlaydError):
    """A state file cannot be read, parsed or written."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"state file {path}: {problem}")


# Targets already swept by this process, and the temporary files it is writing right now.
_swept: set[str] = set()
_in_flight: set[str] = set()
_lock = threading.Lock()


def _temporary_name(target: str) -> str:
    return f".{os.path.basename(target)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, under another user
    return True


def _stale(directory: str, name: str, pattern: re.Pattern[str]) -> bool:
    match = pattern.match(name)
    if match is None:
        return False
    pid = match.group(1)
    if pid is None:  # an older writer that did not put its pid in the name
        return True
    if int(pid) == os.getpid():
        return os.path.join(directory, name) not in _in_flight
    return not _writer_alive(int(pid))


def _sweep_once(target: str) -> None:
    """Remove temporary files of target that crashed writers left (once per process and target)."""
    with _lock:
        if target in _swept:
            return
        _swept.add(target)
    directory = os.path.dirname(target) or "."
    pattern = re.compile(rf"^\.{re.escape(os.path.basename(target))}\.(?:(\d+)\.)?[0-9a-f]{{8}}\.tmp$")
    try:
        names = os.listdir(directory)
    except OSError:
        return  # no directory yet (nothing to sweep) or not ours to read: the caller reports what matters
    for name in names:
        if _stale(directory, name, pattern):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass  # gone meanwhile, or not ours to remove; a leftover is harmless


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, mode: int = 0o600) -> None:
    """Replace path with obj as JSON; the file has `mode` from its first byte on.

    The directory must exist. Raises StateError for I/O failures, TypeError/ValueError when obj
    is not JSON-serialisable (checked before anything touches the disk).
    """
    target = os.fspath(path)
    data = (json.dumps(obj, allow_nan=False) + "\n").encode("utf-8")
    directory = os.path.dirname(target) or "."
    _sweep_once(target)
    temporary = os.path.join(directory, _temporary_name(target))
    _in_flight.add(temporary)  # before it exists, so a sweep in another thread never takes it for stale
    try:
        _write_temporary_and_replace(target, temporary, data, mode)
    finally:
        _in_flight.discard(temporary)
    try:
        _fsync_directory(directory)
    except OSError as exc:
        raise StateError(target, f"written, but syncing {directory} failed: {_describe(exc)}") from exc


def _write_temporary_and_replace(target: str, temporary: str, data: bytes, mode: int) -> None:
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise StateError(target, f"cannot create {temporary}: {_describe(exc)}") from exc
    try:
        try:
            # O_CREAT applied the umask, which can only have narrowed mode; now make it exact.
            os.fchmod(fd, mode)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
    except OSError as exc:
        try:
            os.unlink(temporary)
        except OSError:
            pass  # the write error below is the one worth reporting
        raise StateError(target, f"cannot write: {_describe(exc)}") from exc


def read_json(path: str | os.PathLike[str]) -> Any | None:
    """The JSON document stored at path, or None when there is no such file.

    Raises StateError (naming the path) when the file is unreadable or corrupt.
    """
    target = os.fspath(path)
    _sweep_once(target)
    try:
        with open(target, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(target, f"cannot read: {_describe(exc)}") from exc
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise StateError(target, "corrupt: not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise StateError(target, f"corrupt: not valid JSON ({exc})") from None


def set_aside(path: str | os.PathLike[str]) -> str | None:
    """Move a damaged state file out of the way, keeping it for the operator to inspect.

    The file becomes <name>.damaged-<UTC time>, so the daemon can write a fresh one and a
    later damage never overwrites the evidence of an earlier one. Returns the new path, or
    None when the file is gone or cannot be moved (the caller reports the damage either way).
    """
    target = os.fspath(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = f"{target}.damaged-{stamp}-{secrets.token_hex(2)}"
    try:
        os.rename(target, aside)
    except OSError:
        return None
    return aside
