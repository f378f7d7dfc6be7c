"""Control API: commands validate before the daemon sees anything, errors keep
their class across the wire. (The socket server itself: tests/integration/test_control_socket.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from overlayd.api import protocol
from overlayd.api.client import ControlClient, DaemonUnreachable
from overlayd.api.commands import dispatch
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


def test_client_reports_a_missing_daemon_clearly(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnreachable, match="is it running"):
        ControlClient(tmp_path / "none.sock").call("status")
