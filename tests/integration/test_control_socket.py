"""The control socket refuses what it must and keeps serving: a real ControlServer on a temp path.

Oversized and malformed requests get one error line; a client whose uid is not allowed
(a child process that drops to uid 65534) is refused by the SO_PEERCRED check even when
the socket's file mode would let it in; a client that stalls is cut off. After each,
a good request is still answered.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from overlayd.api import server as server_module
from overlayd.api.client import ControlClient
from overlayd.api.protocol import MAX_REQUEST_BYTES
from overlayd.api.server import ControlServer
from overlayd.errors import NotFoundError

pytestmark = pytest.mark.integration

NOBODY = 65534

# Starts as root and drops to nobody before connecting, with every module it needs already
# imported (python itself lives under /root, closed to nobody).
_CHILD = """
import json, os, socket, sys
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(10)
try:
    sock.connect(sys.argv[1])
except PermissionError:
    print(json.dumps({"connect": "EACCES"}))
    sys.exit(0)
try:
    sock.sendall(b'{"cmd": "status", "args": {}}\\n')
except BrokenPipeError:  # refused (and closed) before the request was read: the reply is queued
    pass
reply = b""
while not reply.endswith(b"\\n"):
    chunk = sock.recv(65536)
    if not chunk:
        break
    reply += chunk
print(json.dumps({"uid": os.getuid(), "reply": reply.decode()}))
"""


class StubPlane:
    """A ControlPlane with fixed answers; counts the status calls that reached it."""

    def __init__(self) -> None:
        self.status_calls = 0

    async def status(self) -> dict[str, Any]:
        self.status_calls += 1
        return {"node": "stub", "health": "ok"}

    async def hosts(self) -> list[dict[str, Any]]:
        return []

    async def peers(self) -> list[dict[str, Any]]:
        return []

    async def pod_add(self, name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"name": name}

    async def pod_del(self, name: str) -> None:
        return None

    async def pod_get(self, name: str) -> dict[str, Any]:
        raise NotFoundError(f"no pod {name}")

    async def pod_list(self) -> list[dict[str, Any]]:
        return []

    async def cni_list(self) -> list[dict[str, Any]]:
        return []


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are 0700, and uid 65534 must reach the socket.
    path = Path(tempfile.mkdtemp(prefix="ovl-ctl-", dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _raw(path: Path, data: bytes, *, close_write: bool = True) -> dict[str, Any]:
    """Send raw bytes, read the one reply line, decode it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(str(path))
        sock.sendall(data)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        reply = bytearray()
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return json.loads(reply)


def _child_as_nobody(path: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _run_with_server(path: Path, plane: StubPlane, client_side) -> ControlServer:
    server = ControlServer(path, plane, on_refused=lambda reason: server.reasons.append(reason))
    server.reasons = []  # type: ignore[attr-defined]  (what the daemon counts, by reason)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            await trio.to_thread.run_sync(client_side, server)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return server


def _serves(path: Path) -> bool:
    return ControlClient(path, timeout=10).call("status") == {"node": "stub", "health": "ok"}


def test_oversized_and_malformed_requests_are_refused_and_serving_goes_on(socket_dir: Path) -> None:
    path = socket_dir / "overlayd.sock"
    plane = StubPlane()

    def client_side(server: ControlServer) -> None:
        assert _serves(path)
        cases = [
            (b"x" * (MAX_REQUEST_BYTES + 10), "larger than"),  # no newline at all
            (b'{"cmd": "status", "args": {"pad": "' + b"a" * MAX_REQUEST_BYTES + b'"}}\n', "larger than"),
            (b"{not json\n", "not valid JSON"),
            (b"\xff\xfe\xfd\n", "not valid JSON"),
            (b"[1, 2, 3]\n", "must be a JSON object"),
            (b'{"cmd": 7}\n', '"cmd"'),
            (b'{"cmd": "status", "args": []}\n', '"cmd"'),
            (b'{"cmd": "no.such"}\n', "unknown command"),
            (b'{"cmd": "pod.add", "args": {"name": "../../etc"}}\n', ""),
            (b"\n", "not valid JSON"),
        ]
        for data, message in cases:
            reply = _raw(path, data)
            assert reply["ok"] is False and reply["error"]["kind"] == "usage", (data[:40], reply)
            assert message in reply["error"]["message"]
            assert _serves(path), f"server stopped answering after {data[:40]!r}"
        # Client errors never reached the plane: only the good status calls did.
        assert plane.status_calls == 1 + len(cases)
        # Refused before any command ran, by reason; the bad pod name is the command's own error.
        assert server.reasons == ["oversized"] * 2 + ["malformed"] * 7

    _run_with_server(path, plane, client_side)


def test_uid_not_allowed_is_refused_by_peer_credentials(socket_dir: Path) -> None:
    path = socket_dir / "overlayd.sock"
    plane = StubPlane()

    def client_side(server: ControlServer) -> None:
        assert NOBODY not in server.allowed_uids
        assert oct(path.stat().st_mode & 0o777) == "0o660"
        # The file mode is the first gate: nobody cannot even connect.
        assert _child_as_nobody(path) == {"connect": "EACCES"}
        # Open the file mode, so only the SO_PEERCRED check stands in the way.
        path.chmod(0o666)
        for attempt in range(1, 3):
            result = _child_as_nobody(path)
            assert result["uid"] == NOBODY
            reply = json.loads(result["reply"])
            assert reply["ok"] is False and reply["error"]["kind"] == "usage"
            assert f"uid {NOBODY} may not use this socket" in reply["error"]["message"]
            assert server.refused == attempt and server.reasons == ["uid"] * attempt
            assert _serves(path)
        assert plane.status_calls == 2  # only root's requests reached the plane

    _run_with_server(path, plane, client_side)


def test_a_stalling_client_is_cut_off_and_serving_goes_on(socket_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "_REQUEST_TIMEOUT", 0.5)
    path = socket_dir / "overlayd.sock"

    def client_side(server: ControlServer) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
            stalled.connect(str(path))
            stalled.sendall(b'{"cmd": "sta')  # and then nothing, connection left open
            assert _serves(path)  # served meanwhile
            stalled.settimeout(10)
            reply = json.loads(stalled.recv(65536))
        assert reply["ok"] is False and "not received in time" in reply["error"]["message"]
        assert _serves(path)

    _run_with_server(path, StubPlane(), client_side)


def test_socket_is_removed_when_the_server_stops(socket_dir: Path) -> None:
    path = socket_dir / "overlayd.sock"
    _run_with_server(path, StubPlane(), lambda server: None)
    assert not os.path.exists(path)
