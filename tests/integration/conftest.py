"""Integration fixtures: real etcd, real daemons, real kernel namespaces.

Everything a test builds carries a per-run random name and is torn down even
when the test fails. These tests need root; without it they are skipped.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.lab import runner
from overlayd.lab.plan import LabPlan, make_plan
from tests.integration.etcd_fixture import etcd_prefix, etcd_server, raw  # noqa: F401  (fixtures for every module)
from tests.integration.labfaults import stop_daemon

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="integration tests need root (namespaces, netlink, etcd)")
    for item in items:
        if "integration" in item.nodeid:
            item.add_marker(skip)


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}{secrets.token_hex(3)}"


def netns_exec(netns: str, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True,
                          check=check, timeout=timeout)


def overlayctl(plan_host_socket: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run([sys.executable, "-m", "overlayd.cli.main", "--socket", str(plan_host_socket), *args],
                          capture_output=True, text=True, check=check, timeout=60)


class Lab:
    """A running lab plus the result of `lab up`."""

    def __init__(self, plan: LabPlan, result: dict) -> None:
        self.plan = plan
        self.result = result

    def host(self, name: str):
        return next(h for h in self.plan.hosts if h.name == name)

    def pod_ip(self, pod_name: str) -> str:
        return next(p["ip"] for p in self.result["pods"] if p["name"] == pod_name)

    def pod_netns(self, pod_name: str) -> str:
        return next(p["netns"] for p in self.result["pods"] if p["name"] == pod_name)


def ping_through_restarts(lab: Lab, src_pod: str, dst_pod: str, hosts: list[str], sig: int,
                          count: int = 300, interval: float = 0.01) -> tuple[int, str]:
    """Ping dst_pod from src_pod while the daemons of `hosts` are killed with `sig` and
    started again; returns (replies received, ping's output)."""
    import re

    src_netns = next(p["netns"] for p in lab.result["pods"] if p["name"] == src_pod)
    ping = subprocess.Popen(["ip", "netns", "exec", src_netns, "ping", "-q", "-i", str(interval), "-c", str(count),
                             "-W", "1", lab.pod_ip(dst_pod)], stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    for name in hosts:
        stop_daemon(lab.host(name), sig)
        runner.start_daemon(lab.plan, lab.host(name))
    for name in hosts:
        runner.wait_ready(lab.host(name))
    out, _ = ping.communicate(timeout=60)
    match = re.search(r"(\d+) received", out)
    return (int(match.group(1)) if match else 0), out


def running_lab(tmp_base: Path, hosts: int, backend: str, wireguard_implementation: str = "auto") -> Iterator[Lab]:
    """A lab up for as long as the generator is not closed (`yield from` it in a fixture)."""
    plan = make_plan(unique_name(), hosts, backend, tmp_base, wireguard_implementation=wireguard_implementation)
    try:
        result = runner.up(plan)
        yield Lab(plan, result)
    finally:
        runner.down(plan.name, tmp_base)


@pytest.fixture(scope="module")
def lab3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from running_lab(tmp_path_factory.mktemp("lab"), 3, "vxlan")


@pytest.fixture(scope="module")
def lab_wg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A 3-host lab on the WireGuard backend (our userspace engine: no kernel module here)."""
    yield from running_lab(tmp_path_factory.mktemp("lab"), 3, "wireguard")


@pytest.fixture(scope="module")
def lab_hostgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A 3-host lab on host-gw: every lab host is on the one underlay bridge, so on-link."""
    yield from running_lab(tmp_path_factory.mktemp("lab"), 3, "host-gw")


@pytest.fixture(scope="module")
def lab_wggo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A 3-host lab on the WireGuard backend running Debian's stock wireguard-go."""
    yield from running_lab(tmp_path_factory.mktemp("lab"), 3, "wireguard", "wireguard-go")
