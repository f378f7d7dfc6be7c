"""CNI ADD and DEL, per call: overlayd-cni against the reference `bridge` + `host-local` plugins.

Both run as a container runtime runs them: one plugin process per call, with
CNI_* in the environment and the config on stdin, from the host's network
namespace, into a netns made beforehand with `ip netns add` (not timed; the
runtime makes it either way). The "host" is a one-host overlayd lab (real
etcd, real daemon); the reference plugins get their own bridge in the same
host namespace and a subnet of their own. Timed: the wall-clock time of each
plugin call as the runtime sees it (process start to exit).

overlayd-cni is what `overlayctl cni install` puts in place: the C front
(overlayd/cni/shim.c) built for the lab host's socket; --python-client adds the
Python client alone (what is installed without a C compiler) as a third
implementation. Rounds alternate which implementation goes first. Run as root
from the repository root, on a quiet machine:

    python3 -m benchmarks.bench_cni [--containers 20] [--rounds 5] [--python-client]

Writes benchmarks/results/cni.json.
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
from pathlib import Path

from overlayd.cli.cni import launcher
from overlayd.cni.build import build_shim
from overlayd.lab import runner
from overlayd.lab.plan import make_plan
from overlayd.netns import enter_named_netns

REFERENCE = Path("/usr/lib/cni")
THEIR_BRIDGE = "cnibench0"
THEIR_SUBNET = "10.99.0.0/24"
RESULTS = Path(__file__).resolve().parent / "results" / "cni.json"
LOAD_WAIT_S = 600  # wait at most this long for the 1-minute load to drop below --max-load


def _plugin(binary: Path, command: str, conf: dict, container_id: str, netns: str) -> float:
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
           "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": f"{binary.parent}:{REFERENCE}"}
    start = time.perf_counter()
    proc = subprocess.run([str(binary)], input=json.dumps(conf).encode(), env=env, capture_output=True)
    elapsed = (time.perf_counter() - start) * 1e3
    if proc.returncode != 0:
        raise RuntimeError(f"{binary.name} {command} failed: {proc.stdout.decode()} {proc.stderr.decode()}")
    return elapsed


def _round(binary: Path, conf: dict, containers: int, tag: str) -> tuple[list[float], list[float]]:
    names = [f"cb{tag}{secrets.token_hex(3)}" for _ in range(containers)]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        adds = [_plugin(binary, "ADD", conf, name, f"/run/netns/{name}") for name in names]
        dels = [_plugin(binary, "DEL", conf, name, f"/run/netns/{name}") for name in names]
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return adds, dels


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median_ms": statistics.median(ordered), "p10_ms": ordered[len(ordered) // 10],
            "p90_ms": ordered[(len(ordered) * 9) // 10], "mean_ms": statistics.fmean(ordered),
            "stdev_ms": statistics.stdev(ordered) if len(ordered) > 1 else 0.0, "calls": len(ordered)}


def _per_round(timings: dict[str, dict[str, list[float]]], op: str, per_round: int) -> list[float]:
    ours, theirs = timings["overlayd"][op], timings["reference"][op]
    return [round(statistics.median(ours[i:i + per_round]) / statistics.median(theirs[i:i + per_round]), 3)
            for i in range(0, len(ours), per_round)]


def _wait_for_quiet(max_load: float) -> float:
    deadline = time.monotonic() + LOAD_WAIT_S
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-load", type=float, default=1.0, help="wait for the 1-minute load to drop below")
    parser.add_argument("--python-client", action="store_true",
                        help="also time the Python client alone (overlayctl cni install --plugin python)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-cni-"))
    plan = make_plan(f"bc{secrets.token_hex(2)}", 1, "vxlan", base)
    runner.up(plan)
    try:
        host = plan.hosts[0]
        ours = base / "bin" / "overlayd-cni"
        build_shim(ours, str(host.socket))  # as `overlayctl cni install` does
        python_client = base / "bin-py" / "overlayd-cni"
        python_client.parent.mkdir()
        python_client.write_text(launcher())
        python_client.chmod(0o755)
        our_conf = {"cniVersion": "1.0.0", "name": "bench", "type": "overlayd-cni", "socket": str(host.socket)}
        their_conf = {"cniVersion": "1.0.0", "name": "bench-ref", "type": "bridge", "bridge": THEIR_BRIDGE,
                      "isGateway": True, "ipMasq": False, "mtu": 1450,
                      "ipam": {"type": "host-local", "ranges": [[{"subnet": THEIR_SUBNET}]],
                               "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(base / "host-local")}}
        enter_named_netns(host.netns)  # the runtime's place: the host's netns (the children inherit it)
        load_before = _wait_for_quiet(args.max_load)
        impls = [("overlayd", ours, our_conf), ("reference", REFERENCE / "bridge", their_conf)]
        if args.python_client:
            impls.append(("python_client", python_client, our_conf))
        timings: dict[str, dict[str, list[float]]] = {name: {"add": [], "del": []} for name, _, _ in impls}
        for name, binary, conf in impls:  # warm-up: page cache, first bridge/iptables set-up
            _round(binary, conf, 2, "w")
        for r in range(args.rounds):
            for name, binary, conf in (impls if r % 2 == 0 else impls[::-1]):
                adds, dels = _round(binary, conf, args.containers, name[0])
                timings[name]["add"] += adds
                timings[name]["del"] += dels
        load_after = os.getloadavg()[0]
    finally:
        runner.down(plan.name, base)
    result = {
        "benchmark": "cni",
        "containers_per_round": args.containers, "rounds": args.rounds,
        "overlayd": {op: _summary(v) for op, v in timings["overlayd"].items()},
        "overlayd_plugin": "C front (overlayd/cni/shim.c), Python client as fallback",
        "reference_bridge_host_local": {op: _summary(v) for op, v in timings["reference"].items()},
        "ratio_overlayd_to_reference_median": {
            op: statistics.median(timings["overlayd"][op]) / statistics.median(timings["reference"][op])
            for op in ("add", "del")},
        # Per round (each the same containers' calls of both, one after the other): how steady the ratio is.
        "ratio_per_round": {op: _per_round(timings, op, args.containers) for op in ("add", "del")},
        **({"python_client_alone": {op: _summary(v) for op, v in timings["python_client"].items()}}
           if args.python_client else {}),
        "target_ratio": 0.5,
        "load_1min": {"before": round(load_before, 2), "after": round(load_after, 2)},
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "command": "python3 -m benchmarks.bench_cni " + " ".join(sys.argv[1:]),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
