"""The one lab matrix test every backend passes: `overlayctl lab up` with 3 hosts, one pod
each, every pod pair over ICMP and TCP, and pods sized to the backend's MTU.

Each case is a lab of its own, built and torn down by the CLI as an operator would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import netns_exec, unique_name

pytestmark = pytest.mark.integration

UNDERLAY_MTU = 1500
CASES = {  # id: (lab up flags, the pods' MTU)
    "vxlan": (["--backend", "vxlan"], UNDERLAY_MTU - 50),
    "wireguard-userspace": (["--backend", "wireguard", "--wireguard-implementation", "userspace"],
                            UNDERLAY_MTU - 80),
    "wireguard-go": (["--backend", "wireguard", "--wireguard-implementation", "wireguard-go"], UNDERLAY_MTU - 80),
    "host-gw": (["--backend", "host-gw"], UNDERLAY_MTU),  # no encapsulation: the full underlay MTU
}


def _lab(base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "overlayd.cli.main", "--json", "lab", *args, "--dir", str(base)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_pod_reaches_every_other_pod(case: str, tmp_path: Path) -> None:
    flags, pod_mtu = CASES[case]
    name = unique_name("m")
    try:
        up = _lab(tmp_path, "up", "--name", name, *flags)
        assert up.returncode == 0, (up.stdout[-3000:], up.stderr[-3000:])
        result = json.loads(up.stdout)
        assert result["ok"] and result["backend"] == flags[1]
        pods = [p["name"] for p in result["pods"]]
        assert len(pods) == 3
        for src in pods:
            for dst in pods:
                if src != dst:
                    assert result["matrix"][src][dst]["icmp"], f"ICMP {src} -> {dst}"
                    # The probe server answers with its hostname: the pod's own name.
                    assert result["matrix"][src][dst]["tcp"] is True, f"TCP {src} -> {dst}"
                    assert result["matrix"][src][dst]["tcp_hostname"] == dst, f"TCP {src} -> {dst}"
                    # One type per field, so JSON consumers need no special cases.
                    assert {k: type(v) for k, v in result["matrix"][src][dst].items()} == {
                        "icmp": bool, "tcp": bool, "tcp_hostname": str}
        assert len({h["subnet"] for h in result["hosts"]}) == 3
        assert all(h["peers"] == 2 and h["health"] == "ok" for h in result["hosts"]), result["hosts"]
        link = json.loads(netns_exec(result["pods"][0]["netns"], "ip", "-j", "link", "show", "eth0").stdout)[0]
        assert link["mtu"] == pod_mtu
    finally:
        _lab(tmp_path, "down", "--name", name)
