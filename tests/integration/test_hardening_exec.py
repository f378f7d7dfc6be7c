"""`overlayctl pod exec` with a command that cannot run: one clear line and the shell's exit codes
(126 found but not executable, 127 not found), never a traceback.

The pod is a real set of net, UTS and IPC namespaces (held by an unshared `sleep`); a ControlServer
on a temp socket answers pod.get with their paths, as the daemon would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from overlayd.api.server import ControlServer
from tests.integration.test_control_socket import StubPlane, socket_dir  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[2]
POD_HOSTNAME = "ovl-exec-pod"


class PodPlane(StubPlane):
    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid

    async def pod_get(self, name: str) -> dict[str, Any]:
        ns = f"/proc/{self.pid}/ns"
        return {"name": name, "namespaces": {"net": f"{ns}/net", "uts": f"{ns}/uts", "ipc": f"{ns}/ipc"}}


@pytest.fixture
def pod_pid() -> Iterator[int]:
    holder = subprocess.Popen(["unshare", "--net", "--uts", "--ipc", "sh", "-c",
                               f"hostname {POD_HOSTNAME}; echo up; exec sleep 120"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait(timeout=10)


def _overlayctl(socket_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "overlayd.cli.main", "--socket", str(socket_path), *args],
                          capture_output=True, text=True, timeout=30, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def _exec_results(socket_path: Path, plane: PodPlane, commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    results: list[subprocess.CompletedProcess] = []

    def client_side() -> None:
        for cmd in commands:
            results.append(_overlayctl(socket_path, "pod", "exec", "pod1", "--", *cmd))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(ControlServer(socket_path, plane).serve)
            await trio.to_thread.run_sync(client_side)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return results


def _one_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(f in lines[0] for f in fragments), lines[0]


def test_commands_that_cannot_run_exit_126_or_127_with_one_line(socket_dir: Path, pod_pid: int,
                                                               tmp_path: Path) -> None:
    ok, not_executable, directory, missing, missing_path = _exec_results(
        socket_dir / "overlayd.sock", PodPlane(pod_pid),
        [["hostname"], ["/etc/passwd"], [str(tmp_path)], ["ovl-no-such-command"], ["/nonexistent/bin/x"]])
    assert (ok.returncode, ok.stdout.strip()) == (0, POD_HOSTNAME), ok.stderr  # it did run inside the pod
    assert not_executable.returncode == 126
    _one_line(not_executable, "/etc/passwd", "cannot execute")
    assert directory.returncode == 126
    _one_line(directory, str(tmp_path))
    assert missing.returncode == 127
    _one_line(missing, "ovl-no-such-command", "not found")
    assert missing_path.returncode == 127
    _one_line(missing_path, "/nonexistent/bin/x", "not found")


def test_the_exec_helper_uses_the_same_exit_codes(pod_pid: int) -> None:
    ns = f"/proc/{pod_pid}/ns"
    for cmd, code in (("/etc/passwd", 126), ("ovl-no-such-command", 127)):
        result = subprocess.run([sys.executable, "-m", "overlayd.pods.exec", f"{ns}/net", f"{ns}/uts", f"{ns}/ipc",
                                 "--", cmd], capture_output=True, text=True, timeout=30, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert result.returncode == code, result.stderr
        _one_line(result, cmd)
