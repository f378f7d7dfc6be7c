"""`lab down` removes only the namespaces the lab made (recorded in its dir) or its daemons made
(pods with a directory in the lab dir), never others that merely share the name prefix."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.errors import OverlaydError
from overlayd.lab import runner, topology
from overlayd.lab.plan import make_plan
from tests.integration.conftest import unique_name

pytestmark = pytest.mark.integration


@pytest.fixture
def strangers() -> Iterator[list[str]]:
    """Namespaces someone else made; the test names them, the fixture removes them afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        topology.delete_netns(name)


def _add_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)


def test_down_keeps_namespaces_that_only_share_the_prefix(tmp_path: Path, strangers: list[str]) -> None:
    name = unique_name("hd")
    plan = make_plan(name, 1, "vxlan", tmp_path)
    (host,) = plan.hosts
    strangers += [f"{name}-zz", f"{host.netns}-stranger", f"{name}-h9"]
    try:
        runner.build(plan)
        # A pod as the host's daemon makes it: its directory under the lab dir first, then its netns.
        (host.dir / "run" / "pods" / "p1").mkdir(parents=True)
        _add_netns(f"{host.pod_netns_prefix}p1")
        for stranger in strangers:
            _add_netns(stranger)
    finally:
        result = runner.down(name, tmp_path)
    assert sorted(result["namespaces_removed"]) == sorted([plan.underlay_netns, plan.outside_netns,
                                                           host.netns, f"{host.pod_netns_prefix}p1"])
    for ours in result["namespaces_removed"]:
        assert not topology.netns_exists(ours)
    assert all(topology.netns_exists(s) for s in strangers), "lab down removed a namespace it did not make"


def test_down_without_a_lab_dir_removes_no_namespace(tmp_path: Path, strangers: list[str]) -> None:
    name = unique_name("hd")
    strangers += [f"{name}-h1", f"{name}-ul"]
    for stranger in strangers:
        _add_netns(stranger)
    result = runner.down(name, tmp_path)
    assert result["namespaces_removed"] == []
    assert all(topology.netns_exists(s) for s in strangers)


def test_a_build_stopped_by_a_foreign_namespace_cleans_up_only_its_own(tmp_path: Path,
                                                                     strangers: list[str]) -> None:
    name = unique_name("hd")
    plan = make_plan(name, 2, "vxlan", tmp_path)
    foreign = plan.hosts[1].netns  # exactly the name the lab wants for h2
    strangers.append(foreign)
    _add_netns(foreign)
    try:
        with pytest.raises(OverlaydError, match=foreign):
            runner.build(plan)
    finally:
        result = runner.down(name, tmp_path)
    assert sorted(result["namespaces_removed"]) == sorted([plan.underlay_netns, plan.outside_netns,
                                                           plan.hosts[0].netns])
    assert not topology.netns_exists(plan.underlay_netns) and not topology.netns_exists(plan.hosts[0].netns)
    assert topology.netns_exists(foreign)
