"""WireGuard data path: overlayd-wg against Debian's wireguard-go, kernel VXLAN as the ceiling.

One run, one machine, one test bed (tests/integration/wg_bed.py): ns A and ns B joined by a
veth (198.18.1.1/.2), a tunnel between them with MTU 1420 and addresses 10.99.0.1/.2:

- "ours": overlayd-wg at both ends (TSO/GRO offload on), configured with `wg`;
- "go": Debian's wireguard-go at both ends, configured the same way;
- "vxlan": kernel VXLAN, unencrypted: what the kernel alone does over the same veth.

Throughput is iperf3 TCP A -> B (median of the rounds; rounds alternate the order of the
implementations so drift on a shared machine hits all alike), with the CPU the tunnel
processes and the whole machine used meanwhile. Latency is `ping -c 100 -i 0.01` (average).
The engine micro-benchmark runs the core in-process: 1420-byte packets per second through
`send_packets` (encrypt) and `receive_datagrams_untrusted` (decrypt) in batches of 64 as the
engine calls them, full handshakes per second, and the offload layer's cost per 64 KiB.

Run as root from the repository root (about 2 minutes with the defaults):

    python3 -m benchmarks.bench_wireguard [--seconds 10] [--rounds 3] [--no-micro]

Writes benchmarks/results/wireguard.json and prints a table.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import re
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from overlayd.wireguard import Datagram, Device, PeerConfig, TunPacket, crypto
from overlayd.wireguard.constants import REJECT_AFTER_TIME
from overlayd.wireguard.offload import GSO_TCPV4, NEEDS_CSUM, VNET_HDR, coalesce, split_frame
from tests.integration.wg_bed import WgBed

RESULTS = Path(__file__).resolve().parent / "results" / "wireguard.json"
KINDS = ("ours", "go", "vxlan")
LABELS = {"ours": "overlayd-wg", "go": "wireguard-go (Debian)", "vxlan": "kernel VXLAN (no crypto)"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# Tunnel runs.


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _machine_ticks() -> tuple[int, int]:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values), values[3] + values[4]  # total, idle + iowait


def throughput(bed: WgBed, seconds: float) -> dict:
    """One iperf3 TCP run A -> B; CPU is in percent of one core (the machine has os.cpu_count())."""
    pids = {name: side.proc.pid for name, side in (("a", bed.a), ("b", bed.b)) if side.proc is not None}
    before = {name: _cpu_ticks(pid) for name, pid in pids.items()}
    total0, idle0 = _machine_ticks()
    start = time.monotonic()
    report = bed.iperf(bed.a, bed.b, seconds=seconds, timeout=seconds + 30)
    elapsed = time.monotonic() - start
    total1, idle1 = _machine_ticks()
    cpu = {f"tunnel_{name}": round((_cpu_ticks(pid) - before[name]) / CLK_TCK / elapsed * 100, 1)
           for name, pid in pids.items()}
    cpu["machine_busy"] = round((1 - (idle1 - idle0) / max(1, total1 - total0)) * 100 * (os.cpu_count() or 1), 1)
    end = report["end"]
    return {
        "mbit_s": round(end["sum_received"]["bits_per_second"] / 1e6, 1),
        "retransmits": end["sum_sent"].get("retransmits"),
        "cpu_percent_of_one_core": cpu,
    }


def latency(bed: WgBed) -> dict:
    out = bed.sh(bed.a, "ping", "-q", "-c", "100", "-i", "0.01", "-W", "2", bed.b.tunnel_ip, timeout=60).stdout
    match = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", out)
    loss = re.search(r"([\d.]+)% packet loss", out)
    if match is None or loss is None:
        raise RuntimeError(f"cannot read ping output: {out!r}")
    return {"avg_ms": float(match[2]), "min_ms": float(match[1]), "max_ms": float(match[3]),
            "loss_percent": float(loss[1])}


def tunnel_benchmarks(seconds: float, rounds: int) -> dict:
    results: dict[str, dict] = {kind: {"runs": []} for kind in KINDS}
    with ExitStack() as stack:
        beds = {kind: stack.enter_context(WgBed(kind, kind)) for kind in KINDS}
        for kind, bed in beds.items():
            bed.ping(bed.a, bed.b.tunnel_ip, count=2)  # handshake before measuring
            results[kind]["latency"] = latency(bed)
        for r in range(rounds):
            order = KINDS[r % len(KINDS):] + KINDS[: r % len(KINDS)]
            for kind in order:
                run = throughput(beds[kind], seconds)
                results[kind]["runs"].append(run)
                print(f"  round {r + 1} {kind:5s} {run['mbit_s']:8.1f} Mbit/s  cpu {run['cpu_percent_of_one_core']}",
                      flush=True)
    for kind in KINDS:
        results[kind]["median_mbit_s"] = statistics.median(run["mbit_s"] for run in results[kind]["runs"])
    return results


# Engine micro-benchmark (in-process, the core plus the offload layer).


A_ADDR, B_ADDR = ("198.18.1.1", 51820), ("198.18.1.2", 51820)


def _packet(size: int) -> bytes:
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, size, 0, 0, 64, 17, 0, bytes([10, 99, 0, 1]), bytes([10, 99, 0, 2]))
    return header + bytes(size - len(header))


def _pair(now: float) -> tuple[Device, Device]:
    a = Device(crypto.generate_private_key(os.urandom), rng=os.urandom)
    b = Device(crypto.generate_private_key(os.urandom), rng=os.urandom)
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
    """Items per second of `work()` (which returns how many items it did), repeated for min_seconds."""
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds:
        done += work()
    return done / elapsed


def micro_benchmarks() -> dict:
    now = 1000.0
    a, b = _pair(now)
    _handshake(a, b, now)
    batch = [_packet(1420)] * 64
    encrypt_pps = _rate(lambda: len(a.send_packets(batch, now)))

    sealed = [(bytes(d.data), A_ADDR) for _ in range(400) for d in a.send_packets(batch, now)]
    batches = [sealed[i : i + 64] for i in range(0, len(sealed), 64)]
    start = time.perf_counter()
    delivered = sum(sum(isinstance(o, TunPacket) for o in b.receive_datagrams_untrusted(x, now)) for x in batches)
    decrypt_pps = delivered / (time.perf_counter() - start)

    clock = [now]

    def one_handshake() -> int:
        clock[0] += REJECT_AFTER_TIME + 1  # the session expired: the next packet needs a handshake
        _handshake(a, b, clock[0])
        return 1

    handshakes = _rate(one_handshake)

    mss = 1368
    payload = bytes(mss * 44)
    tcp = struct.pack(">HHIIHHHH", 40000, 5201, 1, 1, 0x8010, 500, 0, 0) + b"\x01\x01\x08\x0a" + bytes(8)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 1, 0x4000, 64, 6, 0,
                     bytes([10, 99, 0, 1]), bytes([10, 99, 0, 2]))
    frame = memoryview(VNET_HDR.pack(NEEDS_CSUM, GSO_TCPV4, 52, mss, 20, 16) + ip + tcp + payload)
    segments = split_frame(frame)
    split_per_s = _rate(lambda: len(split_frame(frame)) and 1)
    coalesce_per_s = _rate(lambda: len(coalesce(segments)) and 1)
    return {
        "encrypt_packets_per_s": round(encrypt_pps),
        "decrypt_packets_per_s": round(decrypt_pps),
        "encrypt_gbit_s_of_1420_byte_packets": round(encrypt_pps * 1420 * 8 / 1e9, 2),
        "decrypt_gbit_s_of_1420_byte_packets": round(decrypt_pps * 1420 * 8 / 1e9, 2),
        "handshakes_per_s_both_ends_in_one_process": round(handshakes),
        "tso_split_us_per_64k_frame": round(1e6 / split_per_s, 1),
        "gro_coalesce_us_per_64k_frame": round(1e6 / coalesce_per_s, 1),
        "segments_per_64k_frame": len(segments),
    }


# Report.


def machine() -> dict:
    go = subprocess.run(["wireguard-go", "--version"], capture_output=True, text=True, timeout=10).stdout.split("\n")[0]
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "wireguard_go": go}


def print_table(result: dict) -> None:
    tunnels = result.get("tunnels")
    if tunnels:
        print(f"\n{'tunnel':28s} {'TCP Mbit/s (median)':>20s} {'runs':>24s} {'ping avg ms':>12s}")
        for kind in KINDS:
            t = tunnels[kind]
            runs = "/".join(f"{r['mbit_s']:.0f}" for r in t["runs"])
            print(f"{LABELS[kind]:28s} {t['median_mbit_s']:20.1f} {runs:>24s} {t['latency']['avg_ms']:12.3f}")
        print(f"ours / wireguard-go: {result['ratio_ours_over_go']:.2f}x   "
              f"ours / kernel VXLAN: {result['ratio_ours_over_vxlan']:.2f}x")
    micro = result.get("micro")
    if micro:
        print("\nengine micro-benchmark (one core, in-process):")
        for key, value in micro.items():
            print(f"  {key:45s} {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="iperf3 duration per run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per implementation (default 3)")
    parser.add_argument("--no-micro", action="store_true", help="skip the in-process micro-benchmark")
    parser.add_argument("--no-tunnels", action="store_true", help="skip the namespace runs")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 and not args.no_tunnels:
        print("bench_wireguard: the tunnel runs need root (namespaces, TUN)", file=sys.stderr)
        return 2
    result: dict = {"machine": machine(), "seconds_per_run": args.seconds, "rounds": args.rounds}
    if not args.no_micro:
        print("engine micro-benchmark...", flush=True)
        result["micro"] = micro_benchmarks()
    if not args.no_tunnels:
        print(f"tunnels: {args.rounds} rounds of {args.seconds:g} s iperf3 TCP per implementation...", flush=True)
        tunnels = tunnel_benchmarks(args.seconds, args.rounds)
        result["tunnels"] = tunnels
        result["ratio_ours_over_go"] = round(tunnels["ours"]["median_mbit_s"] / tunnels["go"]["median_mbit_s"], 2)
        result["ratio_ours_over_vxlan"] = round(tunnels["ours"]["median_mbit_s"] / tunnels["vxlan"]["median_mbit_s"], 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
