"""Control API: commands validate before the daemon sees anything; the socket
server answers every bad request with one clear error and keeps serving."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from overlayd.api import protocol
from overlayd.api.client import ControlClient, DaemonUnreachable
from overlayd.api.commands import dispatch
from overlayd.api.server import ControlServer
from overlayd.errors import NotFoundError, UsageError


class RecordingPlane:
    """Stands in for the daemon: records what reached it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def status(self) -> dict[str, Any]:
        self.calls.append(("status", None))
        return {"node": "h1"}

    async def hosts(self) -> list[dict[str, Any]]:
        return []

    async def peers(self) -> list[dict[str, Any]]:
        return []

    async def pod_add(self, name: str, labels: dict[str, str]) -> dict[str, Any]:
        self.calls.append(("pod_add", (name, labels)))
        return {"name": name}

    async def pod_del(self, name: str) -> None:
        raise NotFoundError(f"no pod {name}")

    async def pod_get(self, name: str) -> dict[str, Any]:
        return {"name": name}

    async def pod_list(self) -> list[dict[str, Any]]:
        return []


@pytest.mark.parametrize("cmd, args", [
    ("pod.add", {"name": "Bad_Name"}),
    ("pod.add", {}),
    ("pod.add", {"name": "ok", "labels": {"k": 1}}),
    ("pod.add", {"name": "ok", "labels": ["k"]}),
    ("pod.add", {"name": "ok", "extra": True}),
    ("pod.get", {"name": 5}),
    ("status", {"verbose": True}),
    ("rm -rf", {}),
])
def test_bad_requests_never_reach_the_daemon(cmd: str, args: dict) -> None:
    plane = RecordingPlane()
    with pytest.raises(UsageError):
        trio.run(dispatch, plane, cmd, args)
    assert plane.calls == []


def test_good_request_is_dispatched() -> None:
    plane = RecordingPlane()
    result = trio.run(dispatch, plane, "pod.add", {"name": "web", "labels": {"app": "web"}})
    assert result == {"name": "web"}
    assert plane.calls == [("pod_add", ("web", {"app": "web"}))]


def test_errors_round_trip_as_the_same_exception_class() -> None:
    line = protocol.encode_error(NotFoundError("no pod x"))
    with pytest.raises(NotFoundError, match="no pod x"):
        protocol.decode_reply(line)


@pytest.mark.parametrize("line", [b"not json", b"[1,2]", b'{"args": {}}', b'{"cmd": 1}', b'{"cmd": "x", "args": []}',
                                  b"\xff\xfe"])
def test_malformed_request_lines_are_usage_errors(line: bytes) -> None:
    with pytest.raises(UsageError):
        protocol.decode_request_untrusted(line)


def _raw_exchange(path: Path, payload: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        try:
            sock.sendall(payload)
        except BrokenPipeError:
            pass
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return json.loads(reply)


def test_server_over_a_real_socket(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    plane = RecordingPlane()

    async def main() -> None:
        server = ControlServer(path, plane)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            assert path.stat().st_mode & 0o777 == 0o660

            def client_side() -> None:
                client = ControlClient(path)
                assert client.call("status") == {"node": "h1"}
                with pytest.raises(NotFoundError):
                    client.call("pod.del", name="ghost")
                oversized = _raw_exchange(path, b'{"cmd": "status", "args": {"x": "' + b"a" * 70000 + b'"}}\n')
                assert oversized["ok"] is False and "larger than" in oversized["error"]["message"]
                garbage = _raw_exchange(path, b"\x00\x01garbage\n")
                assert garbage["error"]["kind"] == "usage"
                assert client.call("status") == {"node": "h1"}  # still serving

            await trio.to_thread.run_sync(client_side)
            nursery.cancel_scope.cancel()
        assert not path.exists()  # removed on the way out

    trio.run(main)


def test_client_reports_a_missing_daemon_clearly(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnreachable, match="is it running"):
        ControlClient(tmp_path / "none.sock").call("status")
