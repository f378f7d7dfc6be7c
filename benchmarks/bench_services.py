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
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

from benchmarks.nftwatch import RuleMonitor, nft_f_floor, nft_list, summary_ms, wait_until
from overlayd.api.client import ControlClient
from overlayd.cluster.etcd import EtcdClient
from overlayd.lab import runner
from overlayd.lab.plan import make_plan
from overlayd.netns import enter_named_netns
from overlayd.registry.records import PodEntry

RESULTS = Path(__file__).resolve().parent / "results" / "services.json"
PREFIX = "/overlayd/network"
FAKE_NODE = "bench-node"


def _fake_pod(i: int) -> PodEntry:
    return PodEntry(f"b{i}", FAKE_NODE, IPv4Address(int(IPv4Address("10.250.0.0")) + i + 1), {"bench": "yes"})


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
    wait_until(lambda: f"mod {endpoints} map" in nft_list(h1.netns), timeout=60, interval=0.2)
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
                done = monitor.wait(lambda line: " svc_bench_tcp_80 " in line and needle in line)
            else:
                etcd.txn("bench", (), deletes=[key])
                done = monitor.wait(lambda line: " svc_bench_tcp_80 " in line and needle not in line)
            ours.append(done - start)
    finally:
        monitor.close()
    # The anchor: write the very same table with nft alone (what any implementation must pay).
    floor = nft_f_floor(h1.netns, nft_list(h1.netns), updates)
    ControlClient(socket).call("service.del", name="bench")
    etcd.revoke(lease)
    etcd.close()
    return {"endpoints": endpoints, "overlayd_etcd_write_to_rule_in_kernel": summary_ms(ours),
            "nft_f_alone": summary_ms(floor),
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
    wait_until(lambda: f"{server['ip']} . 5201" in nft_list(h1.netns), timeout=30)
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
