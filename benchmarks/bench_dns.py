"""Cluster DNS: overlayd's resolver against dnsmasq serving the same names, in one run.

A client namespace and a server namespace joined by a veth pair; in the server namespace
overlayd's resolver (overlayd.dns.serve_dns in a process of its own, as in the daemon) on
10.53.0.1 and dnsmasq on 10.53.0.3, both on port 53, both holding the same names (N
services at <svc>.svc.cluster.local and N pods at <pod>.pod.cluster.local; dnsmasq with
--host-record and --local=/cluster.local/ so other names there are NXDOMAIN). dnsperf in the
client namespace sends the same query file to each (80% A of existing names, 10% AAAA of
them: NODATA, 10% A of absent names: NXDOMAIN).

Per round, both servers, the order alternating: the highest rate (dnsperf with 100 queries
outstanding for --seconds; queries per second and the server's CPU seconds per query from
/proc), then the latency at a fixed rate of half dnsmasq's median (dnsperf -Q ... -v, every
reply's latency; p50, p99, loss). Then overlayd alone at 80% of its median rate, its
"sustainable" rate. Medians over rounds with min-max. Run as root from the repository root:

    /opt/overlayd/venv/bin/python -m benchmarks.bench_dns [--rounds 5] [--seconds 5] [--names 200]

Writes benchmarks/results/dns.json. Target (issue 11): rate >= 0.5x dnsmasq's, and p99 < 2 ms
at that rate.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry

from overlayd.dns.metrics import DnsMetrics
from overlayd.dns.names import ClusterNames
from overlayd.dns.resolver import NamesSource
from overlayd.dns.server import serve_dns

RESULTS = Path(__file__).resolve().parent / "results" / "dns.json"
OURS, DNSMASQ, CLIENT = "10.53.0.1", "10.53.0.3", "10.53.0.2"
DOMAIN = "cluster.local"
LOAD_WAIT_S = 600
OUTSTANDING = 100  # dnsperf -q: queries in flight when sending as fast as the server answers
CLK_TCK = os.sysconf("SC_CLK_TCK")


def names(count: int) -> tuple[dict[str, IPv4Address], dict[str, IPv4Address]]:
    """(pods, services): pod{i} -> 10.244.x.y, svc{i} -> 10.96.x.y."""
    pods = {f"pod{i}": IPv4Address(0x0AF40000 + 2 + i) for i in range(count)}
    services = {f"svc{i}": IPv4Address(0x0A600000 + 10 + i) for i in range(count)}
    return pods, services


def query_lines(count: int) -> list[str]:
    pods, services = names(count)
    existing = [f"{s}.svc.{DOMAIN}" for s in services] + [f"{p}.pod.{DOMAIN}" for p in pods]
    lines = []
    for i, name in enumerate(existing):
        lines.append(f"{name} A")
        if i % 8 == 0:  # 10% of the queries: AAAA of an existing name (NODATA)
            lines.append(f"{name} AAAA")
        if i % 8 == 4:  # 10%: an absent name (NXDOMAIN)
            lines.append(f"absent{i}.svc.{DOMAIN} A")
    return lines


def dnsmasq_conf(count: int) -> str:
    pods, services = names(count)
    lines = ["no-resolv", "no-hosts", "bind-interfaces", f"listen-address={DNSMASQ}", f"local=/{DOMAIN}/"]
    lines += [f"host-record={s}.svc.{DOMAIN},{ip}" for s, ip in services.items()]
    lines += [f"host-record={p}.pod.{DOMAIN},{ip}" for p, ip in pods.items()]
    return "\n".join(lines) + "\n"


# --- the server under test, in a process of its own (run by the bench in the server namespace) ---


def serve(listen: str, count: int) -> None:
    pods, services = names(count)
    source = NamesSource(ClusterNames(DOMAIN, pods=pods, services=services))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: serve_dns(
                source, IPv4Address(listen), 53, [], DnsMetrics(CollectorRegistry()), task_status=task_status))
            print("ready", flush=True)

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    trio.run(main)


# --- the bed ------------------------------------------------------------------------------------


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@dataclass
class Bed:
    client_ns: str
    server_ns: str
    queries: Path
    servers: dict[str, tuple[str, int]]  # name -> (address, pid)


@contextmanager
def bed(count: int) -> Iterator[Bed]:
    tag = secrets.token_hex(3)
    client_ns, server_ns = f"dnsbc{tag}", f"dnsbs{tag}"
    work = Path(tempfile.mkdtemp(prefix="dnsbench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for ns in (client_ns, server_ns):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", client_ns, "link", "add", "c0", "type", "veth", "peer", "name", "s0", "netns", server_ns)
        sh("ip", "-n", client_ns, "addr", "add", f"{CLIENT}/24", "dev", "c0")
        for address in (OURS, DNSMASQ):
            sh("ip", "-n", server_ns, "addr", "add", f"{address}/24", "dev", "s0")
        sh("ip", "-n", client_ns, "link", "set", "c0", "up")
        sh("ip", "-n", server_ns, "link", "set", "s0", "up")
        queries = work / "queries.txt"
        queries.write_text("\n".join(query_lines(count)) + "\n")
        conf = work / "dnsmasq.conf"
        conf.write_text(dnsmasq_conf(count))
        dnsmasq = subprocess.Popen(["ip", "netns", "exec", server_ns, "dnsmasq", "--keep-in-foreground",
                                    f"--conf-file={conf}", f"--pid-file={work / 'dnsmasq.pid'}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(dnsmasq)
        ours = subprocess.Popen(["ip", "netns", "exec", server_ns, sys.executable, "-m", "benchmarks.bench_dns",
                                 "--serve", OURS, "--names", str(count)], stdout=subprocess.PIPE)
        procs.append(ours)
        assert ours.stdout is not None
        if ours.stdout.readline().strip() != b"ready":
            raise RuntimeError("overlayd's resolver did not start")
        time.sleep(0.5)  # dnsmasq binds at once; give it a moment all the same
        if dnsmasq.poll() is not None:
            raise RuntimeError("dnsmasq did not start")
        yield Bed(client_ns, server_ns, queries, {"overlayd": (OURS, ours.pid), "dnsmasq": (DNSMASQ, dnsmasq.pid)})
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        for ns in (client_ns, server_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def dnsperf(b: Bed, server: str, seconds: float, rate: float | None = None) -> dict[str, float]:
    """One dnsperf run: qps, loss, the server's CPU per query; with `rate`, latency percentiles."""
    address, pid = b.servers[server]
    cmd = ["ip", "netns", "exec", b.client_ns, "dnsperf", "-s", address, "-d", str(b.queries), "-l", str(seconds),
           "-q", str(OUTSTANDING), "-t", "1"]
    if rate is not None:
        cmd += ["-Q", str(int(rate)), "-v"]
    load = os.getloadavg()[0]
    cpu_before = cpu_seconds(pid)
    # Into a file, not a pipe: with -v a reader of the pipe would be a third busy process on 2 cores.
    with tempfile.TemporaryFile("w+") as output:
        subprocess.run(cmd, check=True, stdout=output, stderr=subprocess.STDOUT)
        cpu = cpu_seconds(pid) - cpu_before
        output.seek(0)
        out = output.read()
    sent = int(re.search(r"Queries sent:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    completed = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    result = {"qps": float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
              "sent": sent, "lost": sent - completed, "cpu_us_per_query": cpu / max(completed, 1) * 1e6,
              "load_1min_before": load}
    if rate is not None:
        # -v: "> NOERROR svc1.svc.cluster.local A 0.000123" per reply (latency in seconds, last field).
        latencies = sorted(float(line.rsplit(" ", 1)[1]) for line in out.splitlines()
                           if line.startswith("> ") and re.fullmatch(r"[\d.]+", line.rsplit(" ", 1)[1]))
        result["p50_ms"] = latencies[len(latencies) // 2] * 1e3
        result["p99_ms"] = latencies[min(len(latencies) - 1, (len(latencies) * 99) // 100)] * 1e3
        result["rate"] = rate
    return result


def spread(runs: list[dict[str, float]], key: str) -> dict[str, float]:
    values = [r[key] for r in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def wait_for_quiet(max_load: float) -> float:
    deadline = time.monotonic() + LOAD_WAIT_S
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def run(rounds: int, seconds: float, count: int, max_load: float) -> dict:
    order = ["dnsmasq", "overlayd"]
    with bed(count) as b:
        load_start = wait_for_quiet(max_load)
        for server in order:  # warm up: our memo, both servers' pages
            dnsperf(b, server, 1)
        peak: dict[str, list[dict[str, float]]] = {s: [] for s in order}
        at_half: dict[str, list[dict[str, float]]] = {s: [] for s in order}
        for r in range(rounds):
            for server in order if r % 2 == 0 else order[::-1]:
                peak[server].append(dnsperf(b, server, seconds))
        half_rate = statistics.median(p["qps"] for p in peak["dnsmasq"]) / 2
        for r in range(rounds):
            for server in order if r % 2 == 0 else order[::-1]:
                at_half[server].append(dnsperf(b, server, seconds, half_rate))
        sustainable_rate = 0.8 * statistics.median(p["qps"] for p in peak["overlayd"])
        sustainable = [dnsperf(b, "overlayd", seconds, sustainable_rate) for _ in range(rounds)]
        load_end = os.getloadavg()[0]
    summary: dict = {"peak": {}, "at_half_dnsmasq_rate": {}}
    for server in order:
        summary["peak"][server] = {key: spread(peak[server], key) for key in ("qps", "cpu_us_per_query", "lost")}
        summary["at_half_dnsmasq_rate"][server] = {key: spread(at_half[server], key)
                                                   for key in ("p50_ms", "p99_ms", "lost", "qps")}
    summary["overlayd_at_sustainable_rate"] = {key: spread(sustainable, key) for key in ("p50_ms", "p99_ms", "lost")}
    summary["overlayd_at_sustainable_rate"]["rate"] = sustainable_rate
    ratio = summary["peak"]["overlayd"]["qps"]["median"] / summary["peak"]["dnsmasq"]["qps"]["median"]
    p99 = summary["at_half_dnsmasq_rate"]["overlayd"]["p99_ms"]["median"]
    return {
        "benchmark": "dns", "rounds": rounds, "seconds_per_run": seconds, "names": 2 * count,
        "tool": "dnsperf " + subprocess.run(["dpkg-query", "-W", "-f=${Version}", "dnsperf"],
                                            capture_output=True, text=True).stdout,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_1min_start": load_start, "load_1min_end": load_end},
        "half_dnsmasq_rate": half_rate,
        "summary": summary,
        "ratio_qps_overlayd_to_dnsmasq": ratio,
        "target": {"rate_ratio_min": 0.5, "p99_ms_max": 2.0, "met": ratio >= 0.5 and p99 < 2.0},
        "runs": {"peak": peak, "at_half_dnsmasq_rate": at_half, "overlayd_at_sustainable_rate": sustainable},
    }


def table(result: dict) -> str:
    s = result["summary"]

    def cell(d: dict[str, float], fmt: str) -> str:
        return f"{d['median']:{fmt}} ({d['min']:{fmt}}-{d['max']:{fmt}})"

    rows = ["| | overlayd | dnsmasq |", "|---|---|---|"]
    rows.append(f"| queries/s, highest | {cell(s['peak']['overlayd']['qps'], ',.0f')} | "
                f"{cell(s['peak']['dnsmasq']['qps'], ',.0f')} |")
    rows.append(f"| server CPU us per query | {cell(s['peak']['overlayd']['cpu_us_per_query'], '.1f')} | "
                f"{cell(s['peak']['dnsmasq']['cpu_us_per_query'], '.1f')} |")
    rate = result["half_dnsmasq_rate"]
    for key in ("p50_ms", "p99_ms", "lost"):
        fmt = ".3f" if key != "lost" else ".0f"
        rows.append(f"| {key} at {rate:,.0f} q/s (half dnsmasq's) | "
                    f"{cell(s['at_half_dnsmasq_rate']['overlayd'][key], fmt)} | "
                    f"{cell(s['at_half_dnsmasq_rate']['dnsmasq'][key], fmt)} |")
    sus = s["overlayd_at_sustainable_rate"]
    rows.append(f"| p99_ms at {sus['rate']:,.0f} q/s (80% of our highest) | {cell(sus['p99_ms'], '.3f')} "
                f"(lost {sus['lost']['median']:.0f}) | |")
    rows.append(f"\nrate ratio {result['ratio_qps_overlayd_to_dnsmasq']:.2f}x; "
                f"target (>= 0.5x, p99 < 2 ms at half dnsmasq's rate) {'met' if result['target']['met'] else 'MISSED'}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--names", type=int, default=200, help="services, and as many pods")
    parser.add_argument("--max-load", type=float, default=1.0, help="wait (at most 10 min) for a quieter machine")
    parser.add_argument("--serve", metavar="ADDRESS", help=argparse.SUPPRESS)  # the resolver's own process
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.names)
        return
    result = run(args.rounds, args.seconds, args.names, args.max_load)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
