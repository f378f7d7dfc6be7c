"""A daemon that cannot start says why in one line and exits 1 (issue 7, part 1).

With trio >= 0.25 a task's error reaches main() wrapped in exception groups; the operator
must still get one clear line, never a traceback. Run in a namespace of the test's own,
with the newest trio the bounds allow (CI installs it).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import unique_name

pytestmark = pytest.mark.integration


@pytest.fixture
def netns() -> Iterator[str]:
    name = unique_name("fatal")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def run_daemon(netns: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", "netns", "exec", netns, sys.executable, "-m", "overlayd.daemon", "--node-name", "h1",
           "--state-dir", str(tmp_path / "state"), "--run-dir", str(tmp_path / "run"), "--metrics-address", "",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, reason", [
    (("--public-interface", "nope0"), "interface nope0 not found"),
    (("--public-ip", "198.18.9.9"), "public IP 198.18.9.9 is not assigned"),
    (("--public-interface", "lo", "--socket", "/proc/overlayd-test/overlayd.sock"), "/proc/overlayd-test"),
], ids=["no-interface", "foreign-ip", "bad-socket-dir"])
def test_a_fatal_start_error_is_one_line(netns: str, tmp_path: Path, args: tuple[str, ...], reason: str) -> None:
    done = run_daemon(netns, tmp_path, *args)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "ExceptionGroup" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and " ERROR " in lines[0] and reason in lines[0], done.stderr
