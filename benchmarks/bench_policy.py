"""Network policy: how fast a policy change is enforced on every host, and what policy costs in throughput.

One run, one machine, a 3-host lab (real etcd, real daemons, kernel VXLAN):

- Apply to enforcement: 1,000 pod records of a fake host (written straight to etcd under a
  lease of their own, as a host would publish them; labels app=app0..app19), 6 real pods on
  each lab host, 100 policies in force (99 background ones, selecting app0..app19 and
  allowing from other apps, some with ipBlocks, plus `bench`). Each update changes the port
  of `bench` through the control socket (`policy.apply`, what `overlayctl policy apply`
  sends), and we time from just before that call until `nft monitor` on every one of the
  3 hosts shows bench's new rule (control socket -> etcd -> watch on each host -> rules
  built -> `nft -f`). The anchor in the same run is the floor under any such daemon: `nft
  -f` of the very same table text alone, on one host; and the pure rule build
  (policy/nft.py) for the same inputs, in this process.
- Throughput: iperf3 TCP from a pod on h1 to a pod on h2 with the 100 policies in force
  (both pods isolated, the server's allowing rule last in its chain) and with no policy
  at all, in alternating rounds; the ratio of medians (target >= 0.9).

Run as root from the repository root:

    python3 -m benchmarks.bench_policy [--pods 1000] [--policies 100] [--updates 20] [--rounds 8] [--seconds 5]

Writes benchmarks/results/policy.json.
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
from ipaddress import IPv4Address, ip_network
from pathlib import Path
from typing import Any

from benchmarks.nftwatch import RuleMonitor, nft_f_floor, nft_list, summary_ms, wait_until
from overlayd.api.client import ControlClient
from overlayd.cluster.etcd import EtcdClient
from overlayd.lab import runner
from overlayd.lab.plan import make_plan
from overlayd.netns import enter_named_netns
from overlayd.policy import nft
from overlayd.policy.model import parse_policy_untrusted
from overlayd.policy.store import PolicyStore
from overlayd.registry.records import PodEntry

RESULTS = Path(__file__).resolve().parent / "results" / "policy.json"
PREFIX = "/overlayd/network"
FAKE_NODE = "bench-node"
APPS = 20


def _doc(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name}, "spec": spec}


def background_policy(i: int) -> dict[str, Any]:
    peers: list[dict[str, Any]] = [{"podSelector": {"matchLabels": {"app": f"app{(i + 1) % APPS}"}}}]
    if i % 4 == 0:
        peers.append({"ipBlock": {"cidr": "172.16.0.0/12", "except": [f"172.16.{i}.0/24"]}})
    spec: dict[str, Any] = {"podSelector": {"matchLabels": {"app": f"app{i % APPS}"}},
                            "ingress": [{"from": peers, "ports": [{"port": 1000 + i}, {"protocol": "UDP"}]}]}
    if i % 3 == 0:
        spec["egress"] = [{"to": [{"podSelector": {"matchExpressions": [
            {"key": "app", "operator": "In", "values": [f"app{(i + 2) % APPS}", f"app{(i + 3) % APPS}"]}]}}]},
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 53, "protocol": "UDP"}]}]
        spec["policyTypes"] = ["Ingress", "Egress"]
    return _doc(f"bg-{i:03d}", spec)


def bench_policy(port: int) -> dict[str, Any]:
    return _doc("bench", {"podSelector": {"matchLabels": {"role": "bench"}},
                          "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "app1"}}}],
                                       "ports": [{"port": port}]}]})


def iperf_policy() -> dict[str, Any]:
    """Sorts last: a new connection walks every rule of both chains before this one allows it."""
    iperf = {"podSelector": {"matchExpressions": [{"key": "iperf", "operator": "Exists"}]}}
    return _doc("zz-iperf", {**iperf, "policyTypes": ["Ingress", "Egress"],
                             "ingress": [{"from": [iperf], "ports": [{"port": 5201}]}],
                             "egress": [{"to": [iperf], "ports": [{"port": 5201}]}]})


def _fake_pod(i: int) -> PodEntry:
    return PodEntry(f"b{i}", FAKE_NODE, IPv4Address(int(IPv4Address("10.250.0.0")) + i + 1),
                    {"app": f"app{i % APPS}", "tier": "front" if i % 2 else "back"})


def _counters(netns: str) -> int:
    return nft_list(netns).count("\tcounter ")


def setup(plan, etcd: EtcdClient, pods: int, policies: int) -> dict[str, dict]:
    lease = etcd.grant(3600)
    for i in range(pods):
        entry = _fake_pod(i)
        etcd.txn("bench", (), [(f"{PREFIX}/pods/{FAKE_NODE}/{entry.name}", entry.to_json(), lease)])
    real: dict[str, dict] = {}
    for h, host in enumerate(plan.hosts):
        client = ControlClient(host.socket)
        for k in range(5):
            name = f"r{h}-{k}"
            real[name] = client.call("pod.add", name=name, labels={"app": f"app{k}"})
        real[f"bench-{h}"] = client.call("pod.add", name=f"bench-{h}", labels={"role": "bench", "app": "app5"})
    real["iperf-client"] = ControlClient(plan.hosts[0].socket).call("pod.add", name="iperf-client",
                                                                    labels={"iperf": "client", "app": "app7"})
    real["iperf-server"] = ControlClient(plan.hosts[1].socket).call("pod.add", name="iperf-server",
                                                                    labels={"iperf": "server", "app": "app8"})
    return real


def apply_all(etcd: EtcdClient, docs: list[dict[str, Any]], plan) -> float:
    store = PolicyStore(etcd, PREFIX)
    start = time.perf_counter()
    for doc in docs:
        store.apply(parse_policy_untrusted(doc)[0])
    want = 1 + sum(len(parse_policy_untrusted(d)[0].types) for d in docs)
    wait_until(lambda: all(_counters(h.netns) == want for h in plan.hosts), timeout=120, interval=0.1)
    return time.perf_counter() - start


def delete_all(etcd: EtcdClient, plan) -> None:
    keys = [kv.key for kv in etcd.get_prefix(f"{PREFIX}/policies/").kvs]
    for i in range(0, len(keys), 100):  # etcd takes at most 128 operations per transaction
        etcd.txn("bench", (), deletes=[k.decode() if isinstance(k, bytes) else k for k in keys[i:i + 100]])
    wait_until(lambda: all(_counters(h.netns) == 0 for h in plan.hosts), timeout=120, interval=0.1)


def apply_to_enforcement(plan, etcd: EtcdClient, pods: int, policies: int, updates: int) -> dict[str, Any]:
    docs = [background_policy(i) for i in range(policies - 1)] + [bench_policy(2000)]
    first = apply_all(etcd, docs, plan)
    monitors = [RuleMonitor(h.netns) for h in plan.hosts]
    socket = plan.hosts[0].socket
    ours: list[float] = []
    first_host: list[float] = []
    answered: list[float] = []
    try:
        for n in range(updates):
            port = 2001 + n
            for m in monitors:
                m.drain()
            start = time.perf_counter()
            ControlClient(socket).call("policy.apply", document=bench_policy(port))
            answered.append(time.perf_counter() - start)
            needle = f"tcp dport {port} return comment \"bench ingress 0\""
            seen = [m.wait(lambda line: needle in line) for m in monitors]
            ours.append(max(seen) - start)
            first_host.append(min(seen) - start)
    finally:
        for m in monitors:
            m.close()
    h1 = plan.hosts[0]
    text = nft_list(h1.netns)
    floor = nft_f_floor(h1.netns, text, updates)
    # The pure rule build for h1's inputs, in this process.
    parsed = [parse_policy_untrusted(d)[0] for d in docs]
    entries = [_fake_pod(i) for i in range(pods)]
    subnet = ip_network(next(line.split()[2] for line in text.splitlines() if "saddr != @local_pods" in line))
    local = [nft.PodIP(IPv4Address(ip), frozenset({("app", "app0")}), True) for ip in
             list(subnet.hosts())[1:7]]
    build: list[float] = []
    for _ in range(updates):
        start = time.perf_counter()
        nft.build(parsed, nft.pod_ips(entries, "h1") + local, subnet)
        build.append(time.perf_counter() - start)
    sets = text.count("\tset ")
    rules = sum(1 for line in text.splitlines() if "comment \"" in line and " return " in line)
    return {"pods": pods, "policies": policies, "hosts": len(plan.hosts),
            "first_apply_of_all_policies_s": round(first, 2),
            "overlayd_apply_to_rule_on_every_host": summary_ms(ours),
            "apply_to_rule_on_the_first_host": summary_ms(first_host),
            "policy_apply_answered": summary_ms(answered),
            "nft_f_alone_one_host": summary_ms(floor), "rule_build_in_process": summary_ms(build),
            "table_on_h1": {"bytes": len(text), "sets": sets, "allow_rules": rules},
            "how": "from just before the control-socket policy.apply (a changed port of one policy) to `nft monitor` "
                   "on the last of the 3 hosts showing the new rule"}


def _iperf(client_netns: str, address: str, seconds: int) -> tuple[float, float]:
    """(Mbit/s, CPU seconds of both iperf3 ends per GB moved: steadier than Mbit/s on a shared 2-core box)."""
    out = subprocess.run(["ip", "netns", "exec", client_netns, "iperf3", "-c", address, "-p", "5201", "-t",
                          str(seconds), "-J"], capture_output=True, text=True).stdout
    doc = json.loads(out)
    if "error" in doc:
        raise RuntimeError(f"iperf3: {doc['error']}")
    end = doc["end"]
    received = end["sum_received"]
    cpu = end["cpu_utilization_percent"]
    cpu_s = (cpu["host_total"] + cpu["remote_total"]) / 100 * received["seconds"]
    return received["bits_per_second"] / 1e6, cpu_s / (received["bytes"] / 1e9)


def throughput(plan, etcd: EtcdClient, real: dict[str, dict], policies: int, rounds: int, seconds: int) -> dict:
    client, server = real["iperf-client"], real["iperf-server"]
    docs = [background_policy(i) for i in range(policies - 1)] + [iperf_policy()]
    daemon = subprocess.Popen(["ip", "netns", "exec", server["netns"], "iperf3", "-s", "-p", "5201"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    results: dict[str, list[float]] = {"no_policy": [], "policies": []}
    cpu: dict[str, list[float]] = {"no_policy": [], "policies": []}
    try:
        for r in range(rounds):
            order = ["no_policy", "policies"] if r % 2 == 0 else ["policies", "no_policy"]
            for kind in order:
                if kind == "policies":
                    apply_all(etcd, docs, plan)
                else:
                    delete_all(etcd, plan)
                mbit, cpu_per_gb = _iperf(client["netns"], server["ip"], seconds)
                results[kind].append(mbit)
                cpu[kind].append(cpu_per_gb)
    finally:
        daemon.kill()
        daemon.wait()
    medians = {k: statistics.median(v) for k, v in results.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu.items()}
    return {"mbit_s": results, "median_mbit_s": medians,
            "ratio_policies_to_none": medians["policies"] / medians["no_policy"], "target_ratio": 0.9,
            "round_ratios": [p / n for p, n in zip(results["policies"], results["no_policy"])],
            "iperf3_cpu_s_per_gb": cpu, "median_cpu_s_per_gb": cpu_medians,
            "cpu_ratio_policies_to_none": cpu_medians["policies"] / cpu_medians["no_policy"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--policies", type=int, default=100)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-pol-"))
    plan = make_plan(f"bp{secrets.token_hex(2)}", 3, "vxlan", base)
    runner.up(plan)
    load_before = round(os.getloadavg()[0], 2)
    try:
        enter_named_netns(plan.hosts[0].netns)  # etcd and the control sockets, as a host sees them
        etcd = EtcdClient([plan.etcd_endpoint])
        real = setup(plan, etcd, args.pods, args.policies)
        result = {"benchmark": "policy",
                  "apply_to_enforcement": apply_to_enforcement(plan, etcd, args.pods, args.policies, args.updates)}
        delete_all(etcd, plan)
        result["throughput"] = throughput(plan, etcd, real, args.policies, args.rounds, args.seconds)
        etcd.close()
    finally:
        runner.down(plan.name, base)
    result |= {"load_1min_before": load_before, "load_1min_after": round(os.getloadavg()[0], 2),
               "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
               "command": "python3 -m benchmarks.bench_policy " + " ".join(sys.argv[1:])}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
