"""Small JSON state files (address pools, node identity...) written atomically.

A reader sees the old file or the new one, never a torn write, even after a crash or power loss:
the data goes to a temporary file in the same directory, which is fsynced, renamed over the
target, and then the directory is fsynced so the rename itself is durable.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from typing import Any

from overlayd.errors import OverlaydError


class StateError(OverlaydError):
    """A state file cannot be read, parsed or written."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"state file {path}: {problem}")


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
    temporary = os.path.join(directory, f".{os.path.basename(target)}.{secrets.token_hex(4)}.tmp")
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
    try:
        _fsync_directory(directory)
    except OSError as exc:
        raise StateError(target, f"written, but syncing {directory} failed: {_describe(exc)}") from exc


def read_json(path: str | os.PathLike[str]) -> Any | None:
    """The JSON document stored at path, or None when there is no such file.

    Raises StateError (naming the path) when the file is unreadable or corrupt.
    """
    target = os.fspath(path)
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
