"""Services: how fast VIP rules follow the registry, and what a VIP costs in throughput.

One run, one machine, a 2-host lab (real etcd, real daemons, kernel VXLAN):

- Rule update with many endpoints: a service selects N pod records (written straight to
  etcd under a lease of their own, as a host would publish them); then one record more is
  written, or one deleted, and we time from etcd's answer to the put/delete until h1's
  nftables table shows the change (etcd watch -> registry -> render -> `nft -f`). The
  anchor in the same run is the floor under any such daemon: `nft -f` of the very same
  table text, alone.
- Throughput through a VIP: iperf3 TCP from a pod on h1 to a pod on h2, straight to the pod
  IP and through a service VIP whose only endpoint is that pod (DNAT on h1), in alternating
  rounds; the ratio of medians (target >= 0.9).

Run as root from the repository root:

    python3 -m benchmarks.bench_services [--endpoints 1000] [--updates 20] [--rounds 5] [--seconds 5]

Writes benchmarks/results/services.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import queue
import tempfile
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path

from overlayd.api.client import ControlClient
from overlayd.cluster.etcd import EtcdClient
from overlayd.lab import runner
from overlayd.lab.plan import make_plan
from overlayd.netns import enter_named_netns
from overlayd.registry.records import PodEntry

RESULTS = Path(__file__).resolve().parent / "results" / "services.json"
PREFIX = "/overlayd/network"
FAKE_NODE = "bench-node"
TABLE = "overlayd"


def _nft_list(netns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "inet", TABLE],
                          capture_output=True, text=True, check=True).stdout


def _fake_pod(i: int) -> PodEntry:
    return PodEntry(f"b{i}", FAKE_NODE, IPv4Address(int(IPv4Address("10.250.0.0")) + i + 1), {"bench": "yes"})


class RuleMonitor:
    """`nft monitor` in a host's netns: the moment a rule appears, without polling `nft list`."""

    def __init__(self, netns: str) -> None:
        self._proc = subprocess.Popen(["ip", "netns", "exec", netns, "nft", "monitor", "rules"],
                                      stdout=subprocess.PIPE, text=True, bufsize=1)
        self._lines: queue.SimpleQueue[tuple[float, str]] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.3)  # let it subscribe

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put((time.perf_counter(), line))

    def drain(self) -> None:
        while not self._lines.empty():
            self._lines.get()

    def wait_rule(self, chain: str, predicate, timeout: float = 30.0) -> float:
        """The time at which a rule of `chain` satisfying predicate(line) was added."""
        deadline = time.perf_counter() + timeout
        while True:
            at, line = self._lines.get(timeout=max(0.0, deadline - time.perf_counter()))
            if line.startswith("add rule") and f" {chain} " in line and predicate(line):
                return at

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()


def _wait_until(check, timeout: float = 30.0, interval: float = 0.002) -> float:
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise RuntimeError("timed out")
        time.sleep(interval)
    return time.perf_counter() - start


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median_ms": statistics.median(ordered) * 1e3, "min_ms": ordered[0] * 1e3, "max_ms": ordered[-1] * 1e3,
            "p90_ms": ordered[(len(ordered) * 9) // 10] * 1e3, "count": len(ordered)}


def rule_updates(plan, endpoints: int, updates: int) -> dict:
    h1 = plan.hosts[0]
    etcd = EtcdClient([plan.etcd_endpoint])
    lease = etcd.grant(600)
    socket = h1.socket
    ControlClient(socket).call("service.add", name="bench", selector={"bench": "yes"},
                               ports=[{"port": 80, "target_port": 8080, "protocol": "tcp"}])
    for i in range(endpoints):
        entry = _fake_pod(i)
        etcd.txn("bench", (), [(f"{PREFIX}/pods/{FAKE_NODE}/{entry.name}", entry.to_json(), lease)])
    _wait_until(lambda: f"mod {endpoints} map" in _nft_list(h1.netns), timeout=60, interval=0.2)
    monitor = RuleMonitor(h1.netns)
    ours: list[float] = []
    try:
        for n in range(updates):
            entry = _fake_pod(endpoints + n // 2)
            key = f"{PREFIX}/pods/{FAKE_NODE}/{entry.name}"
            needle = f" {entry.ip} . 8080"
            monitor.drain()
            start = time.perf_counter()
            if n % 2 == 0:  # add one endpoint, then take it away again
                etcd.txn("bench", (), [(key, entry.to_json(), lease)])
                done = monitor.wait_rule("svc_bench_tcp_80", lambda line: needle in line)
            else:
                etcd.txn("bench", (), deletes=[key])
                done = monitor.wait_rule("svc_bench_tcp_80", lambda line: needle not in line)
            ours.append(done - start)
    finally:
        monitor.close()
    # The anchor: write the very same table with nft alone (what any implementation must pay).
    text = _nft_list(h1.netns)
    script = f"add table inet {TABLE}\ndelete table inet {TABLE}\n{text}"
    floor: list[float] = []
    for _ in range(updates):
        start = time.perf_counter()
        subprocess.run(["ip", "netns", "exec", h1.netns, "nft", "-f", "-"], input=script, text=True, check=True)
        floor.append(time.perf_counter() - start)
    ControlClient(socket).call("service.del", name="bench")
    etcd.revoke(lease)
    etcd.close()
    return {"endpoints": endpoints, "overlayd_etcd_write_to_rule_in_kernel": _summary(ours),
            "nft_f_alone": _summary(floor),
            "how": "from just before the etcd put/delete of one pod record to `nft monitor` showing the "
                   "service chain's new rule (etcd round trip and watch included)"}


def _iperf(client_netns: str, address: str, seconds: int) -> float:
    out = subprocess.run(["ip", "netns", "exec", client_netns, "iperf3", "-c", address, "-p", "5201", "-t",
                          str(seconds), "-J"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6


def throughput(plan, rounds: int, seconds: int) -> dict:
    h1, h2 = plan.hosts[0], plan.hosts[1]
    client = ControlClient(h1.socket).call("pod.add", name="iperf-client", labels={})
    server = ControlClient(h2.socket).call("pod.add", name="iperf-server", labels={"iperf": "yes"})
    service = ControlClient(h1.socket).call("service.add", name="iperf", selector={"iperf": "yes"},
                                            ports=[{"port": 5201, "target_port": 5201, "protocol": "tcp"}])
    _wait_until(lambda: f"{server['ip']} . 5201" in _nft_list(h1.netns), timeout=30)
    daemon = subprocess.Popen(["ip", "netns", "exec", server["netns"], "iperf3", "-s", "-p", "5201"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        results: dict[str, list[float]] = {"pod_ip": [], "vip": []}
        for r in range(rounds):
            order = [("pod_ip", server["ip"]), ("vip", service["vip"])]
            for kind, address in (order if r % 2 == 0 else order[::-1]):
                results[kind].append(_iperf(client["netns"], address, seconds))
    finally:
        daemon.kill()
        daemon.wait()
    medians = {k: statistics.median(v) for k, v in results.items()}
    return {"mbit_s": results, "median_mbit_s": medians, "ratio_vip_to_pod_ip": medians["vip"] / medians["pod_ip"],
            "target_ratio": 0.9}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-svc-"))
    plan = make_plan(f"bs{secrets.token_hex(2)}", 2, "vxlan", base)
    runner.up(plan)
    try:
        enter_named_netns(plan.hosts[0].netns)  # etcd and the control sockets, as a host sees them
        result = {"benchmark": "services", "rule_update": rule_updates(plan, args.endpoints, args.updates),
                  "throughput": throughput(plan, args.rounds, args.seconds)}
    finally:
        runner.down(plan.name, base)
    result |= {"load_1min_after": round(os.getloadavg()[0], 2),
               "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
               "command": "python3 -m benchmarks.bench_services " + " ".join(sys.argv[1:])}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
