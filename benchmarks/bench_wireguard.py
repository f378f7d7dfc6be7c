"""WireGuard data path: overlayd-wg against Debian's wireguard-go in the same run.

Absolute speeds do not transfer between machines of this kind (the same run gave 0.93x and
2.10x on two of them), so the figures that count are ratios to wireguard-go measured in the
same round, and CPU cost per byte carried, which depends much less on how busy the machine is:

- throughput: iperf3 TCP A -> B through the tunnel;
- CPU seconds per GB carried: utime + stime of every process of both tunnel ends (engine and
  its workers, from /proc) over the bytes iperf3 received;
- latency: `ping -c 200 -i 0.005` through the idle tunnel (average and median RTT), with the
  CPU both ends spent per ping (what busy polling costs).

Test bed (tests/integration/wg_bed.py): ns A and ns B joined by a veth (198.18.1.1/.2), a tunnel
with MTU 1420 between them, configured with the stock `wg` tool. Kinds: "ours" (overlayd-wg),
"go" (Debian's wireguard-go), "vxlan" (kernel VXLAN, no crypto: the ceiling), "relay"
(tests/integration/python_relay.py: TUN, one AEAD call and UDP per packet and nothing else, the
least a Python engine can cost per packet; not a VPN). Each round runs every kind once,
in a rotated order so drift on a shared machine hits all alike; medians and min-max over rounds.
Ratios are taken per round (same minute, same machine state), then their median and min-max.

Run as root from the repository root:

    python3 -m benchmarks.bench_wireguard [--rounds 5] [--seconds 10] [--kinds ours,go] [--no-micro]

Writes benchmarks/results/wireguard.json and prints a table.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import re
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

from overlayd.wireguard import Datagram, DatagramBatch, Device, PeerConfig, crypto, offload
from overlayd.wireguard.constants import REJECT_AFTER_TIME
from overlayd.wireguard.offload import GSO_TCPV4, NEEDS_CSUM, VNET_HDR, coalesce, split_frame
from tests.integration.wg_bed import WgBed

RESULTS = Path(__file__).resolve().parent / "results" / "wireguard.json"
LABELS = {"ours": "overlayd-wg", "ours-poll": "overlayd-wg --busy-poll-us 1000", "go": "wireguard-go (Debian)",
          "vxlan": "kernel VXLAN (no crypto)", "relay": "Python relay (no protocol: the floor)"}
# Kinds that are overlayd-wg with options: (WgBed kind, extra overlayd-wg arguments).
VARIANTS = {"ours-poll": ("ours", ("--busy-poll-us", "1000"))}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PINGS = 200


# CPU accounting from /proc.


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (an engine's workers are its children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            todo += [int(child) for child in task.read_text().split()]
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the processes (all their threads) in seconds; vanished ones count 0."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def _machine_ticks() -> tuple[int, int]:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values), values[3] + values[4]  # total, idle + iowait


# Tunnel runs.


def _tunnel_pids(bed: WgBed) -> list[int]:
    return [p for side in (bed.a, bed.b) if side.proc is not None for p in _descendants(side.proc.pid)]


def throughput(bed: WgBed, seconds: float) -> dict:
    """One iperf3 TCP run A -> B with the CPU both tunnel ends used meanwhile."""
    pids = _tunnel_pids(bed)
    cpu0 = cpu_seconds(pids)
    total0, idle0 = _machine_ticks()
    start = time.monotonic()
    report = bed.iperf(bed.a, bed.b, seconds=seconds, timeout=seconds + 30)
    elapsed = time.monotonic() - start
    cpu = cpu_seconds(pids) - cpu0
    total1, idle1 = _machine_ticks()
    end = report["end"]
    carried = end["sum_received"]["bytes"]
    run = {
        "mbit_s": round(end["sum_received"]["bits_per_second"] / 1e6, 1),
        "bytes": carried,
        "retransmits": end["sum_sent"].get("retransmits"),
        "machine_busy_cores": round((1 - (idle1 - idle0) / max(1, total1 - total0)) * (os.cpu_count() or 1), 2),
    }
    if pids:
        run["tunnel_cpu_s"] = round(cpu, 2)
        run["tunnel_cores"] = round(cpu / elapsed, 2)
        run["cpu_s_per_gb"] = round(cpu / (carried / 1e9), 3)
    return run


def latency(bed: WgBed) -> dict:
    """200 pings 5 ms apart, and the CPU both tunnel ends spent meanwhile (busy polling costs
    CPU between packets: this is where it shows)."""
    pids = _tunnel_pids(bed)
    cpu0 = cpu_seconds(pids)
    out = bed.sh(bed.a, "ping", "-c", str(PINGS), "-i", "0.005", "-W", "2", bed.b.tunnel_ip, timeout=60).stdout
    cpu = cpu_seconds(pids) - cpu0
    rtts = [float(m) for m in re.findall(r"time=([\d.]+) ms", out)]
    loss = re.search(r"([\d.]+)% packet loss", out)
    if not rtts or loss is None:
        raise RuntimeError(f"cannot read ping output: {out[-500:]!r}")
    return {"avg_ms": round(statistics.fmean(rtts), 3), "median_ms": round(statistics.median(rtts), 3),
            "loss_percent": float(loss[1]), "cpu_ms_per_ping": round(cpu * 1e3 / PINGS, 3)}


def spread(values: Sequence[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "runs": [round(v, 3) for v in values]}


def _bed(kind: str) -> WgBed:
    base, args = VARIANTS.get(kind, (kind, ()))
    return WgBed(base, base, ours_args=args)


def tunnel_benchmarks(kinds: Sequence[str], seconds: float, rounds: int) -> dict:
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    pings: dict[str, list[dict]] = {kind: [] for kind in kinds}
    with ExitStack() as stack:
        beds = {kind: stack.enter_context(_bed(kind)) for kind in kinds}
        for bed in beds.values():
            bed.ping(bed.a, bed.b.tunnel_ip, count=2)  # handshake before measuring
        for r in range(rounds):
            order = list(kinds[r % len(kinds):]) + list(kinds[: r % len(kinds)])
            for kind in order:
                run = throughput(beds[kind], seconds)
                run["load_1min"] = os.getloadavg()[0]
                runs[kind].append(run)
                pings[kind].append(latency(beds[kind]))
                print(f"  round {r + 1} {kind:8s} {run['mbit_s']:8.1f} Mbit/s  "
                      f"{run.get('cpu_s_per_gb', float('nan')):6.2f} CPU s/GB  "
                      f"ping {pings[kind][-1]['avg_ms']:.3f} ms ({pings[kind][-1]['cpu_ms_per_ping']:.2f} CPU ms each)  load {run['load_1min']:.2f}", flush=True)
    result: dict = {}
    for kind in kinds:
        result[kind] = {
            "mbit_s": spread([run["mbit_s"] for run in runs[kind]]),
            "ping_avg_ms": spread([p["avg_ms"] for p in pings[kind]]),
            "ping_median_ms": spread([p["median_ms"] for p in pings[kind]]),
            "ping_cpu_ms": spread([p["cpu_ms_per_ping"] for p in pings[kind]]),
            "runs": runs[kind], "pings": pings[kind],
        }
        if all("cpu_s_per_gb" in run for run in runs[kind]):
            result[kind]["cpu_s_per_gb"] = spread([run["cpu_s_per_gb"] for run in runs[kind]])
    return result


def ratios(tunnels: dict, ours: str, anchor: str) -> dict:
    """Per-round ratios of `ours` to `anchor` (same round), with their median and min-max."""
    a, b = tunnels[ours], tunnels[anchor]
    pairs = list(zip(a["runs"], b["runs"]))
    out = {
        "throughput": spread([x["mbit_s"] / y["mbit_s"] for x, y in pairs]),
        "ping_avg": spread([x["avg_ms"] / y["avg_ms"] for x, y in zip(a["pings"], b["pings"])]),
    }
    out["ping_cpu"] = spread([x["cpu_ms_per_ping"] / max(y["cpu_ms_per_ping"], 1e-3)
                              for x, y in zip(a["pings"], b["pings"])])
    if "cpu_s_per_gb" in a and "cpu_s_per_gb" in b:
        out["cpu_per_byte"] = spread([x["cpu_s_per_gb"] / y["cpu_s_per_gb"] for x, y in pairs])
    return out


# Engine micro-benchmark (in-process, the core plus the offload layer): a diagnostic of where
# the time per segment goes, not a figure to compare across machines.


A_ADDR, B_ADDR = ("198.18.1.1", 51820), ("198.18.1.2", 51820)


def _packet(size: int) -> bytes:
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, size, 0, 0, 64, 17, 0, bytes([10, 99, 0, 1]), bytes([10, 99, 0, 2]))
    return header + bytes(size - len(header))


def _pair(now: float) -> tuple[Device, Device]:
    a = Device(crypto.generate_private_key(os.urandom), rng=os.urandom)
    b = Device(crypto.generate_private_key(os.urandom), rng=os.urandom)
    assert a.public_key is not None and b.public_key is not None
    a.set_peer(PeerConfig(b.public_key, endpoint=B_ADDR, allowed_ips=(ipaddress.ip_network("10.99.0.2/32"),)), now)
    b.set_peer(PeerConfig(a.public_key, endpoint=A_ADDR, allowed_ips=(ipaddress.ip_network("10.99.0.1/32"),)), now)
    return a, b


def _handshake(a: Device, b: Device, now: float) -> None:
    """a sends a packet (an initiation goes out), b answers, a confirms with the staged packet."""
    pending = a.send_packet(_packet(100), now)
    for _ in range(3):
        replies: list[Datagram] = []
        for d in pending:
            target, source = (b, A_ADDR) if d.addr == B_ADDR else (a, B_ADDR)
            outputs = target.receive_datagram_untrusted(bytes(d.data), source, now)
            replies += [o for o in outputs if isinstance(o, Datagram)]
        pending = replies
    assert not a.drops and not b.drops, (a.drops, b.drops)


def _rate(work: Callable[[], int], min_seconds: float = 1.0) -> float:
    """Items per CPU second of `work()` (which returns how many items it did), repeated for
    min_seconds of this thread's CPU time: other work on a shared machine barely moves it."""
    done, start = 0, time.thread_time()
    while (elapsed := time.thread_time() - start) < min_seconds:
        done += work()
    return done / elapsed


def _tso_frame(segments: int, mss: int = 1368) -> memoryview:
    """A TCP super-packet as TUN hands it over (TSO, partial checksum), 10.99.0.1 -> 10.99.0.2."""
    payload = bytes(range(256)) * (mss * segments // 256) + bytes(mss * segments % 256)
    tcp = bytearray(struct.pack(">HHIIHHHH", 40000, 5201, 1, 1, 0x8010, 500, 0, 0) + b"\x01\x01\x08\x0a" + bytes(8))
    addresses = bytes([10, 99, 0, 1, 10, 99, 0, 2])
    struct.pack_into(">H", tcp, 16, offload._fold(offload.ones_sum(addresses) + 6 + len(tcp) + len(payload)))
    ip = struct.pack(">BBHHHBBH8s", 0x45, 0, 20 + len(tcp) + len(payload), 1, 0x4000, 64, 6, 0, addresses)
    ip = ip[:10] + struct.pack(">H", offload.checksum(offload.ones_sum(ip))) + ip[12:]
    return memoryview(VNET_HDR.pack(NEEDS_CSUM, GSO_TCPV4, 52, mss, 20, 16) + ip + bytes(tcp) + payload)


def micro_benchmarks() -> dict:
    """Per 1420-byte segment, the paths the engine takes: seal_packets on 44 segments (one TSO
    frame), receive_batch_untrusted on their GRO batch, split_frame and coalesce of the frame;
    plus full handshakes per second."""
    now = 1000.0
    a, b = _pair(now)
    _handshake(a, b, now)
    frame = _tso_frame(44)
    segments = split_frame(frame)
    seal_per_s = _rate(lambda: len(segments) if a.seal_packets(segments, now) else 0)

    batches = [batch for _ in range(400) for batch in a.seal_packets(segments, now)]
    start = time.thread_time()
    opened = 0
    for batch in batches:
        assert isinstance(batch, DatagramBatch)
        result = b.receive_batch_untrusted(batch.data, batch.size, A_ADDR, now)
        assert result is not None
        opened += len(result[0])
    open_per_s = opened / (time.thread_time() - start)

    clock = [now]

    def one_handshake() -> int:
        clock[0] += REJECT_AFTER_TIME + 1  # the session expired: the next packet needs a handshake
        _handshake(a, b, clock[0])
        return 1

    handshakes = _rate(one_handshake)
    split_per_s = _rate(lambda: len(split_frame(frame)))
    coalesce_per_s = _rate(lambda: len(segments) if coalesce(segments) else 0)
    return {
        "seal_us_per_segment": round(1e6 / seal_per_s, 2),
        "open_us_per_segment": round(1e6 / open_per_s, 2),
        "tso_split_us_per_segment": round(1e6 / split_per_s, 2),
        "gro_coalesce_us_per_segment": round(1e6 / coalesce_per_s, 2),
        "handshakes_per_s_both_ends_in_one_process": round(handshakes),
    }


# The ceiling for worker processes on this machine: both ends' per-segment work in 1, 2, ...
# cpu_count processes at once, no I/O. bench_wg_workers measures the real engine's workers.


def _data_path_worker(seconds: float, report: "multiprocessing.connection.Connection") -> None:
    """Both ends' Python work for one tunnel, as the engine does it, in a loop: cut a 64 KiB TSO
    frame, seal its segments, open them as a GRO receive, coalesce them. Sends back how many
    segments went through in `seconds` of wall time."""
    now = 1000.0
    a, b = _pair(now)
    _handshake(a, b, now)
    frame = _tso_frame(44)
    done, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        for batch in a.seal_packets(split_frame(frame), now):
            assert isinstance(batch, DatagramBatch)
            opened = b.receive_batch_untrusted(batch.data, batch.size, A_ADDR, now)
            assert opened is not None
            coalesce(opened[0])
            done += len(opened[0])
    report.send(done)


def worker_simulation(seconds: float) -> dict:
    """Segments per second of wall time with 1, 2, ... os.cpu_count() such processes at once."""
    context = multiprocessing.get_context("fork")
    rates = {}
    for processes in range(1, (os.cpu_count() or 1) + 1):
        pipes = [context.Pipe(duplex=False) for _ in range(processes)]
        workers = [context.Process(target=_data_path_worker, args=(seconds, sender)) for _, sender in pipes]
        for worker in workers:
            worker.start()
        total = sum(receiver.recv() for receiver, _ in pipes)
        for worker in workers:
            worker.join()
        rates[processes] = round(total / seconds)
    return {"segments_per_s": rates, "scaling": {n: round(r / rates[1], 2) for n, r in rates.items()}}


# Report.


def machine() -> dict:
    go = subprocess.run(["wireguard-go", "--version"], capture_output=True, text=True, timeout=10).stdout.split("\n")[0]
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": model,
            "python": platform.python_version(), "wireguard_go": go}


def print_table(result: dict) -> None:
    tunnels = result.get("tunnels")
    if tunnels:
        print(f"\n{'tunnel':28s} {'Mbit/s median (min-max)':>26s} {'CPU s/GB median (min-max)':>28s} "
              f"{'ping avg ms':>12s} {'CPU ms/ping':>12s}")
        for kind, t in tunnels.items():
            mbit = t["mbit_s"]
            cpu = t.get("cpu_s_per_gb")
            cpu_text = f"{cpu['median']:.2f} ({cpu['min']:.2f}-{cpu['max']:.2f})" if cpu else "-"
            print(f"{LABELS[kind]:28s} {mbit['median']:>10.0f} ({mbit['min']:.0f}-{mbit['max']:.0f})"
                  f"{'':>4s} {cpu_text:>28s} {t['ping_avg_ms']['median']:>12.3f} {t['ping_cpu_ms']['median']:>12.2f}")
        for name, r in result.get("ratios", {}).items():
            parts = [f"{key} {v['median']:.2f}x ({v['min']:.2f}-{v['max']:.2f})" for key, v in r.items()]
            print(f"{name}: " + ", ".join(parts))
    simulation = result.get("worker_simulation")
    if simulation:
        print(f"\nworker simulation, segments/s by processes: {simulation['segments_per_s']} "
              f"(x{simulation['scaling']})")
    micro = result.get("micro")
    if micro:
        print("\nengine micro-benchmark (one core, in-process; a diagnostic, not a cross-machine figure):")
        for key, value in micro.items():
            print(f"  {key:45s} {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="iperf3 duration per run (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="runs per implementation (default 5)")
    parser.add_argument("--kinds", default="ours,go,vxlan",
                        help=f"comma-separated, of {', '.join(LABELS)} (default ours,go,vxlan)")
    parser.add_argument("--no-micro", action="store_true", help="skip the in-process micro-benchmark")
    parser.add_argument("--simulate-workers", type=float, default=0, metavar="SECONDS",
                        help="also run the worker-process scaling simulation for SECONDS per step")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if unknown := set(kinds) - set(LABELS):
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    if os.geteuid() != 0 and kinds:
        print("bench_wireguard: the tunnel runs need root (namespaces, TUN)", file=sys.stderr)
        return 2
    result: dict = {"machine": machine(), "command": " ".join(["python3 -m benchmarks.bench_wireguard", *sys.argv[1:]]),
                    "seconds_per_run": args.seconds, "rounds": args.rounds, "load_before": os.getloadavg()}
    if not args.no_micro:
        print("engine micro-benchmark...", flush=True)
        result["micro"] = micro_benchmarks()
    if args.simulate_workers:
        print("worker scaling simulation...", flush=True)
        result["worker_simulation"] = worker_simulation(args.simulate_workers)
    if kinds:
        print(f"tunnels: {args.rounds} rounds of {args.seconds:g} s iperf3 TCP per kind...", flush=True)
        tunnels = tunnel_benchmarks(kinds, args.seconds, args.rounds)
        result["tunnels"] = tunnels
        result["ratios"] = {f"{kind} / go": ratios(tunnels, kind, "go")
                            for kind in ("ours", "ours-poll", "relay") if kind in kinds and "go" in kinds}
    result["load_after"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
