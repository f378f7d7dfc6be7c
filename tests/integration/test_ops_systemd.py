"""overlayd under systemd (issue 9, "Logs and systemd"), with systemd's side played by the test:
journald's stream (JOURNAL_STREAM naming the file stderr goes to), the notify socket with the
watchdog (NOTIFY_SOCKET, WATCHDOG_USEC) and the unit's capability bounding set (setpriv).
A rolling upgrade's cluster config with a field this version does not know is here too.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.lab import runner
from overlayd.lab.plan import LabHost, LabPlan, daemon_config_toml, make_plan
from tests.integration.conftest import unique_name
from tests.integration.labtools import etcdctl, wait_for

pytestmark = pytest.mark.integration

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "overlayd.service"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def journal_env(stream_path: Path) -> dict[str, str]:
    st = stream_path.stat()
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def unit_capabilities() -> str:
    """The unit's CapabilityBoundingSet= as setpriv's --bounding-set argument."""
    line = next(l for l in UNIT.read_text().splitlines() if l.startswith("CapabilityBoundingSet="))
    caps = line.partition("=")[2].split()
    return "-all," + ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)


@pytest.fixture
def one_host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[LabPlan, LabHost]]:
    """Underlay, one host namespace, etcd and the cluster config; no daemon yet."""
    plan = make_plan(unique_name("ops"), 1, request.param, tmp_path)
    try:
        runner.build(plan)
        host = plan.hosts[0]
        host.dir.mkdir(parents=True, exist_ok=True)
        host.config_path.write_text(daemon_config_toml(plan, host, runner.LAB_LEASE_TTL))
        yield plan, host
    finally:
        runner.down(plan.name, tmp_path)


def start(host: LabHost, env: dict[str, str], *, prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    with host.log_path.open("ab") as stderr:
        return subprocess.Popen([*prefix, sys.executable, "-m", "overlayd.daemon", "--config", str(host.config_path)],
                                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env={**os.environ, **env},
                                start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=20)


class NotifySocket:
    """systemd's end of sd_notify: datagrams with the sender's pid (SCM_CREDENTIALS)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[int, str]] = []

    def drain(self) -> list[tuple[int, str]]:
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                return self.messages
            pid = next(struct.unpack("iII", d)[0] for level, kind, d in ancdata
                       if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
            self.messages.append((pid, data.decode()))


def engine_pid(host: LabHost) -> int:
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"overlayd.wireguard.cli" in cmd and str(host.dir / "wg").encode() in cmd:
            return int(entry.name)
    raise AssertionError("no overlayd-wg engine running for the host")


def test_a_fatal_error_is_an_err_priority_line_without_timestamp(tmp_path: Path) -> None:
    netns = unique_name("opsj")
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        err = tmp_path / "stderr"
        err.touch()
        with err.open("ab") as stream:
            done = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "overlayd.daemon",
                                   "--node-name", "h1", "--state-dir", str(tmp_path / "state"), "--run-dir",
                                   str(tmp_path / "run"), "--metrics-address", "", "--log-level", "INFO",
                                   "--public-interface", "nope0"],
                                  stdout=stream, stderr=stream, env={**os.environ, **journal_env(err)}, timeout=60)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    assert done.returncode == 1
    lines = err.read_text().splitlines()
    assert lines and lines[-1].startswith("<3>overlayd: ") and "interface nope0 not found" in lines[-1], lines
    assert all(re.match(r"<[0-7]>", line) and not TIMESTAMP.search(line) for line in lines), lines


@pytest.mark.parametrize("one_host", ["wireguard"], indirect=True)
def test_under_systemd_only_the_daemon_notifies_and_overlayd_wg_logs_to_the_journal(
        one_host: tuple[LabPlan, LabHost], tmp_path: Path) -> None:
    plan, host = one_host
    notify = NotifySocket(tmp_path / "notify")
    host.log_path.touch()
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000", **journal_env(host.log_path)}
    # With no more capabilities than the unit leaves it.
    daemon = start(host, env, prefix=("setpriv", "--bounding-set", unit_capabilities(), "--no-new-privs"))
    try:
        runner.wait_ready(host)
        wait_for("3 watchdog pings", lambda: sum(m == "WATCHDOG=1" for _, m in notify.drain()) >= 3, timeout=10)
        engine = engine_pid(host)
        assert b"NOTIFY_SOCKET=" not in Path(f"/proc/{engine}/environ").read_bytes()
        time.sleep(1)  # time for a stray READY=1 from the engine to arrive
        messages = notify.drain()
        assert {pid for pid, _ in messages} == {daemon.pid}, messages
        texts = [m for _, m in messages]
        assert texts[0] == "READY=1"
        status = next(m for m in texts if m.startswith("STATUS="))
        assert re.fullmatch(r"STATUS=subnet 10\.244\.\d+\.0/24, 0 peers, \d+ pods, health \w+", status), status
    finally:
        stop(daemon)
    log = host.log_path.read_text().splitlines()
    assert any(re.match(rf"<6>overlayd-wg\[{engine}\]: interface ovl\.wg up", line) for line in log), log
    assert any(line.startswith("<6>overlayd: ready") for line in log), log
    assert not any(TIMESTAMP.search(line) for line in log), log
    assert not list((host.dir / "run").glob("*.log"))  # no private, unrotated log file


@pytest.mark.parametrize("one_host", ["vxlan"], indirect=True)
def test_a_config_field_from_a_newer_version_is_ignored_with_one_warning(
        one_host: tuple[LabPlan, LabHost]) -> None:
    plan, host = one_host
    key = "/overlayd/network/config"
    doc = json.loads(etcdctl(plan, "get", key, "--print-value-only"))
    doc["ipam_mode"] = "dense"  # what a newer overlayctl might write during a rolling upgrade
    etcdctl(plan, "put", key, json.dumps(doc))
    daemon = start(host, {})
    try:
        assert runner.wait_ready(host)["ready"]
    finally:
        stop(daemon)
    warnings = [line for line in host.log_path.read_text().splitlines() if "does not know" in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0] and "ipam_mode" in warnings[0], warnings
