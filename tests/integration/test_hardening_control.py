"""The control socket under pressure: out of file descriptors, group members, deeply nested JSON.

Each test runs a real ControlServer on a temp path (in a process of its own where the
test needs to starve it or to connect as another user) and checks that it answers
what it should and keeps serving.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from overlayd.api.client import ControlClient
from overlayd.api.protocol import MAX_REQUEST_BYTES
from overlayd.api.server import ControlServer
from tests.integration.test_control_socket import StubPlane, _raw, _serves, socket_dir  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[2]
NOBODY = 65534
GROUP = 4242  # a gid no real user has here; only the children below take it

# Drops from root to uid nobody with the given primary gid and supplementary groups, then asks for status.
_CHILD = """
import json, os, socket, sys
gid, groups = int(sys.argv[2]), [int(g) for g in sys.argv[3].split(",") if g]
os.setgroups(groups)
os.setgid(gid)
os.setuid(65534)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(10)
sock.connect(sys.argv[1])
try:
    sock.sendall(b'{"cmd": "status", "args": {}}\\n')
except BrokenPipeError:
    pass
reply = b""
while not reply.endswith(b"\\n"):
    chunk = sock.recv(65536)
    if not chunk:
        break
    reply += chunk
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "reply": json.loads(reply)}))
"""


def _as_nobody(path: Path, gid: int, groups: list[int]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(gid), ",".join(map(str, groups))],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _with_server(server: ControlServer, client_side) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            await trio.to_thread.run_sync(client_side)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_members_of_the_socket_group_are_served_others_refused(socket_dir: Path) -> None:
    path = socket_dir / "overlayd.sock"
    plane = StubPlane()
    server = ControlServer(path, plane, group=GROUP)

    def client_side() -> None:
        stat = path.stat()
        assert (stat.st_gid, oct(stat.st_mode & 0o777)) == (GROUP, "0o660")
        # Supplementary member, primary member: both served, as uid nobody.
        for gid, groups in ((NOBODY, [GROUP]), (GROUP, [])):
            result = _as_nobody(path, gid, groups)
            assert result["uid"] == NOBODY
            assert result["reply"] == {"ok": True, "result": {"node": "stub", "health": "ok"}}, (gid, groups)
        # Not a member: the file mode lets it in only once opened up, and then the peer check refuses it.
        path.chmod(0o666)
        result = _as_nobody(path, NOBODY, [NOBODY + 1])
        assert result["reply"]["ok"] is False
        assert f"uid {NOBODY} may not use this socket" in result["reply"]["error"]["message"]
        assert server.refused == 1
        assert plane.status_calls == 2

    _with_server(server, client_side)


def test_deeply_nested_json_is_a_usage_error_without_a_traceback(socket_dir: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    path = socket_dir / "overlayd.sock"
    depth = MAX_REQUEST_BYTES // 2 - 100  # about as deep as fits under the size limit
    requests = [b"[" * depth + b"]" * depth + b"\n",
                b'{"cmd": "status", "args": {"a": ' + b"[" * depth + b"]" * depth + b"}}\n",
                b"{" * depth + b"\n"]

    def client_side() -> None:
        for data in requests:
            assert len(data) <= MAX_REQUEST_BYTES
            reply = _raw(path, data)
            assert reply["ok"] is False and reply["error"]["kind"] == "usage", reply
            assert "nested" in reply["error"]["message"] or "not valid JSON" in reply["error"]["message"]
            assert _serves(path)

    with caplog.at_level(logging.WARNING):
        _with_server(ControlServer(path, StubPlane()), client_side)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def _read_until(fd: int, needle: str, deadline: float) -> str:
    """What the child wrote to fd until needle shows up (AssertionError at the deadline)."""
    buffered = b""
    while needle.encode() not in buffered:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} not seen; got:\n{buffered.decode(errors='replace')}")
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"{needle!r} not seen before EOF; got:\n{buffered.decode(errors='replace')}")
            buffered += chunk
    return buffered.decode(errors="replace")


def _drain(fd: int, seconds: float) -> str:
    """What the child writes to fd within the next few seconds."""
    buffered = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffered += chunk
    return buffered.decode(errors="replace")


def test_running_out_of_file_descriptors_does_not_stop_the_server(socket_dir: Path) -> None:
    path = socket_dir / "overlayd.sock"
    child = subprocess.Popen([sys.executable, "-m", "tests.integration.control_server_child", str(path), "3"],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    held: list[socket.socket] = []
    try:
        assert child.stdout is not None and child.stderr is not None
        err = child.stderr.fileno()
        _read_until(child.stdout.fileno(), "ready", time.monotonic() + 30)
        # Idle connections hold one descriptor each in the server: more than it has left.
        for _ in range(10):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(path))
            held.append(sock)
        log = _read_until(err, "out of file descriptors", time.monotonic() + 30)
        log += _drain(err, 1.0)  # it retries meanwhile: still one line
        assert child.poll() is None, f"server exited:\n{log}"
        assert "Traceback" not in log, log
        assert log.count("out of file descriptors") == 1, log
        for sock in held:
            sock.close()
        held.clear()
        assert ControlClient(path, timeout=20).call("status") == {"node": "stub", "health": "ok"}
        assert child.poll() is None
    finally:
        for sock in held:
            sock.close()
        child.kill()
        child.wait(timeout=10)
