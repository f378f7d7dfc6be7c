"""Pod add/del latency: overlayd's PodService against the CNI reference plugins.

Each implementation gets its own throwaway "host" network namespace holding a
bridge with the gateway address, then adds N pods one after the other and
deletes them again, timing every operation:

- overlayd: PodService.add / delete in-process, as the daemon calls them
  (net+uts+ipc namespaces, veth, address, route, pod store fsynced to disk).
- CNI: what a container runtime does per pod: `ip netns add` + the bridge
  plugin with host-local IPAM (CNI_COMMAND=ADD), and for deletion the plugin
  (CNI_COMMAND=DEL) + `ip netns del`.

overlayd's delete hands the veth teardown to the kernel's namespace cleanup
(see overlayd/pods/manager.py), so the benchmark also reports how long the
kernel takes afterwards until the last host veth is gone ("drain").

Rounds alternate which implementation goes first; results are per-operation
means and medians over all rounds. Run as root from the repository root:

    python3 -m benchmarks.bench_pods [--pods 100] [--rounds 3]

Writes benchmarks/results/pods.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from pathlib import Path

from overlayd.pods import links, nsfiles
from overlayd.pods.config import PodNetworkConfig
from overlayd.pods.manager import PodManager
from overlayd.pods.rtnl import Rtnl
from overlayd.pods.service import PodService
from overlayd.pods.store import PodStore

CNI_DIR = Path("/usr/lib/cni")
SUBNET = ip_network("10.88.0.0/24")
GATEWAY = ip_address("10.88.0.1")
MTU = 1450
BRIDGE = "bench0"
TMPFS = Path("/dev/shm")
RESULTS = Path(__file__).resolve().parent / "results" / "pods.json"


@dataclass
class Timings:
    add_ms: list[float] = field(default_factory=list)
    del_ms: list[float] = field(default_factory=list)
    drain_ms: list[float] = field(default_factory=list)  # per round: after the last delete until no veth is left


def _run(*cmd: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> bytes:
    proc = subprocess.run(cmd, input=stdin, env=env, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stdout + proc.stderr).decode()[-500:]}")
    return proc.stdout


@contextmanager
def host_namespace(name: str) -> Iterator[Path]:
    """A throwaway netns standing in for a host: a bridge holding the pods' gateway address."""
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "-n", name, "link", "add", BRIDGE, "mtu", str(MTU), "type", "bridge")
        _run("ip", "-n", name, "addr", "add", f"{GATEWAY}/{SUBNET.prefixlen}", "dev", BRIDGE)
        _run("ip", "-n", name, "link", "set", BRIDGE, "up")
        yield Path("/run/netns") / name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _wait_for_no_veths(host: Path, prefix: str, timeout: float = 30.0) -> float:
    """Milliseconds until the host netns has no veth named with `prefix` (the kernel's async teardown)."""
    start = time.perf_counter()
    with nsfiles.call_in_netns(host, Rtnl) as rtnl:
        while any(link.kind == "veth" and link.name.startswith(prefix) for link in links.list_links(rtnl)):
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"veths with prefix {prefix} still present after {timeout} s")
            time.sleep(0.0005)
    return (time.perf_counter() - start) * 1e3


def _timed(op: Callable[[], object]) -> float:
    start = time.perf_counter()
    op()
    return (time.perf_counter() - start) * 1e3


def bench_overlayd(run: str, pods: int, work: Path, timings: Timings) -> None:
    # /run is a tmpfs on ordinary hosts (here it is on the root ext4), so the uts/ipc
    # files go to one; the net namespace files share /run/netns with `ip netns add`.
    config = PodNetworkConfig(
        bridge=BRIDGE, gateway=GATEWAY, prefixlen=SUBNET.prefixlen, link_prefix="bo",
        netns_prefix=f"{run}-o-", pod_run_dir=TMPFS / run, mtu=MTU,
    )
    (work / "state").mkdir(parents=True)
    with host_namespace(f"{run}-ho") as host:
        manager = nsfiles.call_in_netns(host, lambda: PodManager(config))
        service = PodService(manager, PodStore(work / "state" / "pods.json"), SUBNET, node="bench")
        names = [f"pod{i}" for i in range(pods)]
        try:
            timings.add_ms += [_timed(lambda: service.add(name, {"bench": "pods"})) for name in names]
            timings.del_ms += [_timed(lambda: service.delete(name)) for name in names]
            timings.drain_ms.append(_wait_for_no_veths(host, config.link_prefix))
        finally:
            for info in service.list():  # only after a failure
                service.delete(info.name)
            service.close()  # and the manager
            shutil.rmtree(config.pod_run_dir, ignore_errors=True)


def _cni_config(data_dir: Path) -> bytes:
    return json.dumps({
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": True,
        "ipMasq": False,
        "mtu": MTU,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": str(SUBNET), "gateway": str(GATEWAY)}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": str(data_dir),
        },
    }).encode()


def bench_cni(run: str, pods: int, work: Path, timings: Timings) -> None:
    config = _cni_config(work / "host-local")
    names = [f"{run}-c-pod{i}" for i in range(pods)]

    def env(command: str, name: str) -> dict[str, str]:
        return {"CNI_COMMAND": command, "CNI_CONTAINERID": name, "CNI_NETNS": f"/run/netns/{name}",
                "CNI_IFNAME": "eth0", "CNI_PATH": str(CNI_DIR), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}

    def add(name: str) -> None:
        _run("ip", "netns", "add", name)
        _run(str(CNI_DIR / "bridge"), stdin=config, env=env("ADD", name))

    def delete(name: str) -> None:
        _run(str(CNI_DIR / "bridge"), stdin=config, env=env("DEL", name))
        _run("ip", "netns", "del", name)

    with host_namespace(f"{run}-hc") as host:
        # Runtimes run plugins in the host's netns: children inherit the forking thread's.
        def phases() -> None:
            try:
                timings.add_ms.extend(_timed(lambda: add(name)) for name in names)
                timings.del_ms.extend(_timed(lambda: delete(name)) for name in names)
            finally:
                for name in names:
                    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)

        nsfiles.call_in_netns(host, phases)
        timings.drain_ms.append(_wait_for_no_veths(host, "veth"))


def _summary(t: Timings) -> dict[str, float]:
    def p90(values: list[float]) -> float:
        return statistics.quantiles(values, n=10)[-1]

    return {
        "add_ms_mean": statistics.fmean(t.add_ms),
        "add_ms_median": statistics.median(t.add_ms),
        "add_ms_p90": p90(t.add_ms),
        "del_ms_mean": statistics.fmean(t.del_ms),
        "del_ms_median": statistics.median(t.del_ms),
        "del_ms_p90": p90(t.del_ms),
        "drain_after_last_del_ms_mean": statistics.fmean(t.drain_ms),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_pods needs root (namespaces, netlink)", file=sys.stderr)
        return 2
    run = f"b{secrets.token_hex(3)}"
    ours, cni = Timings(), Timings()
    benches = [("overlayd", bench_overlayd, ours), ("cni", bench_cni, cni)]
    with tempfile.TemporaryDirectory(prefix=f"{run}-") as tmp:
        for round_no in range(args.rounds):
            order = benches if round_no % 2 == 0 else benches[::-1]
            for label, bench, timings in order:
                work = Path(tmp) / f"{label}{round_no}"
                bench(f"{run}{round_no}", args.pods, work, timings)
                shutil.rmtree(work, ignore_errors=True)
                time.sleep(1.0)  # let the kernel finish freeing namespaces before the next phase
    result = {
        "benchmark": "pods",
        "pods_per_round": args.pods,
        "rounds": args.rounds,
        "overlayd": _summary(ours),
        "cni": _summary(cni),
        "ratio_overlayd_to_cni": {
            "add_mean": statistics.fmean(ours.add_ms) / statistics.fmean(cni.add_ms),
            "del_mean": statistics.fmean(ours.del_ms) / statistics.fmean(cni.del_ms),
        },
        "targets_ms": {"add": 6.0, "del": 12.0},
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "notes": "Per-operation wall time. CNI add = `ip netns add` + /usr/lib/cni/bridge ADD (host-local IPAM); "
                 "CNI del = bridge DEL + `ip netns del`. overlayd add/del = PodService.add/delete in-process, "
                 "including the fsynced pod store write; its delete returns once the pod is cut off and its "
                 "namespace files are gone, and the kernel frees namespaces and veths afterwards: "
                 "drain_after_last_del = time from the last delete of a round until no veth was left.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'ms per pod':10} {'add mean/median/p90':>22} {'del mean/median/p90':>22} {'drain after last del':>21}")
    for label, row in (("overlayd", result["overlayd"]), ("cni", result["cni"])):
        print(f"{label:10} {row['add_ms_mean']:>8.2f} {row['add_ms_median']:>6.2f} {row['add_ms_p90']:>6.2f}"
              f" {row['del_ms_mean']:>8.2f} {row['del_ms_median']:>6.2f} {row['del_ms_p90']:>6.2f}"
              f" {row['drain_after_last_del_ms_mean']:>18.1f} ms")
    ratio = result["ratio_overlayd_to_cni"]
    print(f"overlayd/cni: add {ratio['add_mean']:.2f}x, del {ratio['del_mean']:.2f}x  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
