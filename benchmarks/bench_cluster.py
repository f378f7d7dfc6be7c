"""Cluster benchmarks on a lab of simulated hosts (root; not a test).

  python3 benchmarks/bench_cluster.py [--hosts 10] [--iperf-seconds 5] [--runs 3]

Measures, in one lab, each against its anchor or target in the same run:
- pod-to-pod TCP throughput across two hosts over VXLAN (iperf3) against
  host-to-host TCP on the same simulated underlay (target: ratio >= 0.8);
- join convergence: from a new host's daemon start until every existing host
  has a route to its subnet, with --hosts hosts already up (target: < 1 s);
- daemon resident memory on one host with (hosts - 1) peers and 50 pods
  (target: < 60 MB).
Writes benchmarks/results/cluster.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from overlayd.api.client import ControlClient
from overlayd.lab import runner, topology
from overlayd.lab.plan import LabHost, LabPlan, make_plan
from overlayd.pods.nsutil import CLONE_NEWNET, setns

RESULTS = Path(__file__).parent / "results" / "cluster.json"
JOINS = 3


def _iperf(client_ns: str, server_ns: str, server_ip: str, seconds: int) -> float:
    """One iperf3 TCP run; returns the receiver's bits per second."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server_ip],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):  # wait for the listener
            if subprocess.run(["ip", "netns", "exec", server_ns, "ss", "-Hltn", "sport", "= :5201"],
                              capture_output=True, text=True).stdout.strip():
                break
            time.sleep(0.05)
        out = subprocess.run(["ip", "netns", "exec", client_ns, "iperf3", "-J", "-c", server_ip, "-t", str(seconds)],
                             capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"]
    finally:
        server.kill()
        server.wait()


def measure_throughput(plan: LabPlan, result: dict[str, Any], seconds: int, runs: int) -> dict[str, Any]:
    pods = {p["host"]: p for p in result["pods"]}
    h1, h2 = plan.hosts[0], plan.hosts[1]
    underlay, overlay = [], []
    for _ in range(runs):  # interleaved, so drift on the machine hits both alike
        underlay.append(_iperf(h1.netns, h2.netns, str(h2.underlay_ip), seconds))
        overlay.append(_iperf(pods["h1"]["netns"], pods["h2"]["netns"], pods["h2"]["ip"], seconds))
    u, o = statistics.median(underlay), statistics.median(overlay)
    return {"underlay_mbit_s": round(u / 1e6), "vxlan_pod_to_pod_mbit_s": round(o / 1e6),
            "ratio": round(o / u, 3), "target_ratio": 0.8, "runs": runs, "seconds": seconds,
            "all_underlay_mbit_s": [round(x / 1e6) for x in underlay],
            "all_vxlan_mbit_s": [round(x / 1e6) for x in overlay]}


class RouteWatcher(threading.Thread):
    """Polls one host's routing table from inside its namespace.

    pyroute2 opens its netlink socket per calling thread, in that thread's
    namespace, so the polling must happen on a thread that entered the host.
    """

    def __init__(self, netns: str) -> None:
        super().__init__(daemon=True)
        self.netns = netns
        self.armed = threading.Event()
        self.ready = threading.Event()
        self.seen_at: float | None = None
        self.deadline = 0.0

    def run(self) -> None:
        from pyroute2 import IPRoute

        with open(f"/run/netns/{self.netns}", "rb") as fh:
            setns(fh.fileno(), CLONE_NEWNET)
        with IPRoute() as ipr:
            def ours() -> set[str]:
                return {f"{r.get_attr('RTA_DST')}/{r['dst_len']}"
                        for r in ipr.get_routes(family=2, proto=213)}

            before = ours()
            self.ready.set()
            self.armed.wait()
            while time.monotonic() < self.deadline:
                if ours() - before:
                    self.seen_at = time.monotonic()
                    return
                time.sleep(0.002)


def measure_join(plan: LabPlan, existing: list[LabHost], joiners: list[LabHost]) -> dict[str, Any]:
    times = []
    for host in joiners:
        topology.create_host(plan, host)
        watchers = [RouteWatcher(h.netns) for h in existing]
        for w in watchers:
            w.start()
            w.ready.wait()
        start = time.monotonic()
        for w in watchers:
            w.deadline = start + 30
            w.armed.set()
        runner.start_daemon(plan, host)
        for w in watchers:
            w.join()
        missing = [w.netns for w in watchers if w.seen_at is None]
        if missing:
            raise RuntimeError(f"{host.name} never reached {missing}")
        times.append(max(w.seen_at for w in watchers if w.seen_at) - start)
        runner.wait_ready(host)
    return {"existing_hosts": len(existing), "joins": len(times),
            "seconds": [round(t, 3) for t in times], "median_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3), "target_s": 1.0,
            "note": "from the new daemon's process start (interpreter start-up included) "
                    "until every existing host has a route to its subnet"}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def measure_memory(plan: LabPlan, pods: int) -> dict[str, Any]:
    host = plan.hosts[0]
    client = ControlClient(host.socket)
    existing = len(client.call("pod.list"))
    start = time.monotonic()
    for i in range(pods - existing):
        client.call("pod.add", name=f"mem{i}", labels={})
    add_ms = (time.monotonic() - start) * 1000 / max(1, pods - existing)
    status = client.call("status")
    pid = runner.daemon_pid(host)
    assert pid is not None
    rss_mb = _rss_kib(pid) / 1024
    return {"peers": status["peers"], "pods": status["pods"], "rss_mb": round(rss_mb, 1), "target_mb": 60,
            "pod_add_via_control_socket_ms": round(add_ms, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--iperf-seconds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pods", type=int, default=50)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="ovl-bench-"))
    name = f"b{secrets.token_hex(3)}"
    full = make_plan(name, args.hosts + JOINS, "vxlan", base)
    plan = dataclasses.replace(full, hosts=full.hosts[: args.hosts])
    try:
        print(f"lab {name}: {args.hosts} hosts ...", file=sys.stderr)
        result = runner.up(plan)
        if not result["ok"]:
            raise RuntimeError("lab matrix incomplete")
        report = {
            "throughput": measure_throughput(plan, result, args.iperf_seconds, args.runs),
            "memory": measure_memory(plan, args.pods),
            "join_convergence": measure_join(full, list(plan.hosts), list(full.hosts[args.hosts:])),
            "machine": {"cores": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)},
        }
    finally:
        runner.down(name, base)
        shutil.rmtree(base, ignore_errors=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    t, m, j = report["throughput"], report["memory"], report["join_convergence"]
    print(f"throughput  underlay {t['underlay_mbit_s']} Mbit/s, VXLAN pod-to-pod {t['vxlan_pod_to_pod_mbit_s']} "
          f"Mbit/s, ratio {t['ratio']} (target >= 0.8)")
    print(f"join        median {j['median_s']} s, max {j['max_s']} s with {j['existing_hosts']} hosts (target < 1 s)")
    print(f"memory      {m['rss_mb']} MB RSS with {m['peers']} peers and {m['pods']} pods (target < 60 MB); "
          f"pod add through the control socket {m['pod_add_via_control_socket_ms']} ms")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
