"""Receive-side scaling of overlayd-wg from 1 to N worker processes (`--workers`).

What is measured: how many transport messages per second overlayd-wg opens and writes to its
TUN device when it is offered more than it can take, with W worker processes, and the CPU its
processes (control and workers) spend per GB delivered (inner packet bytes). Only the receive
side: the sender is a simulator that sealed all its packets before the clock starts, so during
the run it costs a GSO sendmsg per 46 datagrams, not a seal per packet, and offers far more
than the engine takes (the loss says by how much).

Test bed: ns A runs overlayd-wg (tunnel 10.99.0.1/24, MTU 1420) with two peers P1 and P2: with 2
workers their sessions belong to different processes (the Device gives each new peer the process
with the fewest; steering.py sends each session's messages to its process). ns S runs
the simulator: two sans-I/O Devices (P1, P2), each with its own UDP socket, joined to A by a
veth (198.18.2.1 / 198.18.2.2). The simulator does a real handshake per peer, pre-seals
--packets inner IPv4/UDP packets of 1380 bytes per peer (10.99.X.1 -> 10.98.0.5, consecutive
counters), then sends them all as fast as it can, alternating peers, once (a replay would be
dropped). In A, 10.98.0.0/24 is a blackhole route: the kernel drops the decrypted packets
cheaply right after the engine's TUN write.

Per run: delivered = rise of A's TUN RX packet counter; window = from the simulator's first
send until the counter stops rising (the engine has emptied its socket queues); delivered
packets/s = delivered / window; lost = sent - delivered (mostly full socket queues at A).
Each round runs every --workers-list value once with a fresh engine and simulator, in a rotated
order; the figure that counts is the per-round ratio of delivered packets/s to the first
value's (same minute, same machine state), with its median and min-max.

On a 2-core machine the simulator and the kernel's share of the traffic (veth, the socket
queues, the TUN writes' route lookups) run on the same cores as the workers, so 2 workers
cannot reach 2x here; the ratio says how much of the second core the engine gets to use.

Run as root from the repository root:

    python3 -m benchmarks.bench_wg_workers [--rounds 3] [--packets 300000] [--workers-list 1,2]

Writes benchmarks/results/wg_workers.json and prints a table.
"""

from __future__ import annotations

import argparse
import base64
import errno
import ipaddress
import itertools
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NoReturn

from benchmarks.bench_wireguard import _descendants, cpu_seconds, machine, spread
from overlayd.wireguard import Datagram, DatagramBatch, Device, PeerConfig, offload
from overlayd.wireguard.udp import SOL_UDP, UDP_SEGMENT
from tests.integration.wg_bed import PORT, REPO, Side, WgBed, new_key, run, start_engine, stop_engine

RESULTS = Path(__file__).resolve().parent / "results" / "wg_workers.json"
A_UNDERLAY, S_UNDERLAY = "198.18.2.1", "198.18.2.2"
MTU = 1420
SINK, SINK_NET = "10.98.0.5", "10.98.0.0/24"
INNER_LENGTH = 1380  # sealed: 1392 padded + 32 = 1424 bytes a datagram, 46 per GSO send
SAMPLE_S = 0.01  # how often the TUN counter is read during a run
QUIET_S = 0.3  # the counter unchanged this long: the engine has emptied its socket queues
HANDSHAKE_TIMEOUT_S = 5
SEAL_S_PER_PACKET = 20e-6  # a generous bound (sealing takes ~5 us a packet) for the ready timeout
BLAST_TIMEOUT_S = 120


@dataclass(frozen=True)
class SimPeer:
    private: str  # wg's base64
    public: str
    port: int  # the simulator's UDP port, A's endpoint for this peer
    source: str  # inner source address: the peer's allowed IP on A


class ReceiveBed(WgBed):
    """WgBed's cleanup (processes, namespaces, socket files, temp dir) around another layout:
    side a is overlayd-wg in ns A, side b is ns S, where the simulator runs, with no engine."""

    def __init__(self) -> None:
        super().__init__("ours", "")
        self.a.underlay_ip = A_UNDERLAY
        self.b = Side(f"{self.prefix}-s", f"{self.prefix}ws", S_UNDERLAY, "", "", "", "")  # ifname unused
        # Configured in this order, P1 goes to worker 1 and P2 to the control (Device spreads peers).
        self.peers = [SimPeer(*new_key(), 40001, "10.99.1.1"), SimPeer(*new_key(), 40002, "10.99.2.1")]

    def open(self) -> None:
        a, s = self.a, self.b
        for side in (a, s):
            run("ip", "netns", "add", side.netns)
            self._namespaces.append(side.netns)
            self.sh(side, "ip", "link", "set", "lo", "up")
        veth_a, veth_s = f"{self.prefix}va", f"{self.prefix}vs"
        run("ip", "link", "add", veth_a, "netns", a.netns, "type", "veth", "peer", "name", veth_s, "netns", s.netns)
        for side, veth in ((a, veth_a), (s, veth_s)):
            self.sh(side, "ip", "addr", "add", f"{side.underlay_ip}/24", "dev", veth)
            self.sh(side, "ip", "link", "set", veth, "up")
        self.sh(a, "ip", "route", "add", "blackhole", SINK_NET)

    def start_engine(self, workers: int) -> subprocess.Popen[bytes]:
        a = self.a
        a.proc = start_engine("ours", a.netns, a.ifname, self.log, ours_args=("--workers", str(workers)))
        self.sh(a, "ip", "addr", "add", f"{a.tunnel_ip}/24", "dev", a.ifname)
        self.sh(a, "ip", "link", "set", a.ifname, "mtu", str(MTU), "up")
        peers = [arg for p in self.peers for arg in ("peer", p.public, "endpoint", f"{S_UNDERLAY}:{p.port}",
                                                      "allowed-ips", f"{p.source}/32")]
        self.wg("set", a.ifname, "private-key", str(self.key_file(a)), "listen-port", str(PORT), *peers)
        return a.proc

    def stop_engine(self) -> None:
        if self.a.proc is not None:
            stop_engine(self.a.proc)
            self.a.proc = None

    @property
    def log(self) -> Path:
        return self.tmp / "engine.log"

    def simulator_config(self, packets: int, rate: float) -> Path:
        """The keys for the simulator, in a file only root can read (not on a command line)."""
        path = self.tmp / "simulator.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"a_public": self.a.public, "packets": packets, "rate": rate,
                       "peers": [asdict(p) for p in self.peers]}, f)
        return path


# The measuring side (root namespace).


def tun_rx(pid: int, ifname: str) -> tuple[int, int]:
    """(packets, bytes) the engine has written to its TUN device (the interface's RX counters).
    /proc/PID/net/dev shows PID's namespace: a read costs microseconds, not an `ip netns exec`."""
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        raise RuntimeError("the engine exited during the run") from None
    for line in lines:
        name, _, counters = line.partition(":")
        if name.strip() == ifname:
            fields = counters.split()
            return int(fields[1]), int(fields[0])
    raise RuntimeError(f"{ifname} is gone from the engine's namespace")


def read_line(proc: subprocess.Popen[bytes], timeout: float, what: str, log: Path) -> str:
    """The simulator's next line (it writes one and then waits for us), or RuntimeError."""
    assert proc.stdout is not None
    fd, data, deadline = proc.stdout.fileno(), b"", time.monotonic() + timeout
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"the simulator did not report {what} within {timeout:.0f} s")
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                errors = log.read_text(errors="replace").strip().splitlines()
                raise RuntimeError(f"the simulator failed: {errors[-1] if errors else f'exit {proc.wait()}'}")
            data += chunk
    return data.decode().strip()


def watch_blast(sim: subprocess.Popen[bytes], pid: int, ifname: str, log: Path) -> tuple[dict, float, int, int]:
    """Read the TUN counter every SAMPLE_S until the simulator has reported and the counter
    has stood still for QUIET_S. Returns (simulator's report, when the counter last rose,
    packets, bytes)."""
    assert sim.stdout is not None
    report: dict | None = None
    deadline = time.monotonic() + BLAST_TIMEOUT_S
    packets, nbytes = tun_rx(pid, ifname)
    last_rise = time.monotonic()
    while report is None or time.monotonic() - last_rise < QUIET_S:
        if report is None and select.select([sim.stdout], [], [], SAMPLE_S)[0]:
            report = json.loads(read_line(sim, 1, "its result", log))
        elif report is not None:
            time.sleep(SAMPLE_S)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the run did not end within {BLAST_TIMEOUT_S} s")
        now_packets, now_bytes = tun_rx(pid, ifname)
        if now_packets != packets:
            packets, nbytes, last_rise = now_packets, now_bytes, time.monotonic()
    return report, last_rise, packets, nbytes


def measure(bed: ReceiveBed, workers: int, packets: int, rate: float) -> dict:
    """One run: a fresh engine with `workers` processes, a fresh simulator, one blast."""
    engine = bed.start_engine(workers)
    ifname, sim_log = bed.a.ifname, bed.tmp / "simulator.log"
    cmd = ["ip", "netns", "exec", bed.b.netns, sys.executable, "-m", "benchmarks.bench_wg_workers",
           "--simulate", str(bed.simulator_config(packets, rate))]
    try:
        with open(sim_log, "wb") as errors:
            sim = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, cwd=REPO)
        try:
            ready_timeout = 30 + packets * len(bed.peers) * SEAL_S_PER_PACKET
            if read_line(sim, ready_timeout, "ready", sim_log) != "ready":
                raise RuntimeError("the simulator said something other than ready")
            # The packet each handshake carried has been delivered: both sessions work end to end.
            rx0, bytes0 = tun_rx(engine.pid, ifname)
            if rx0 < len(bed.peers):
                raise RuntimeError(f"only {rx0} of the {len(bed.peers)} handshake packets reached A's TUN")
            pids = _descendants(engine.pid)
            cpu0 = cpu_seconds(pids)
            assert sim.stdin is not None
            sim.stdin.write(b"go\n")
            sim.stdin.flush()
            report, end, rx1, bytes1 = watch_blast(sim, engine.pid, ifname, sim_log)
            cpu = cpu_seconds(pids) - cpu0
        finally:
            if sim.poll() is None:
                sim.kill()
            sim.wait(10)
    finally:
        bed.stop_engine()
    return figures(workers, len(pids), report, end, rx1 - rx0, bytes1 - bytes0, cpu)


def figures(workers: int, processes: int, report: dict, end: float, delivered: int, nbytes: int,
            cpu: float) -> dict:
    if not delivered:
        raise RuntimeError(f"nothing of the {report['sent']} packets sent reached A's TUN")
    window = end - report["start"]
    return {
        "workers": workers, "engine_processes": processes,
        "sent": report["sent"], "send_errors": report["errors"], "delivered": delivered,
        "lost": report["sent"] - delivered, "loss_percent": round(100 * (1 - delivered / report["sent"]), 1),
        "send_s": round(report["end"] - report["start"], 3), "window_s": round(window, 3),
        "sent_pps": round(report["sent"] / (report["end"] - report["start"])),
        "delivered_pps": round(delivered / window), "delivered_mbit_s": round(nbytes * 8 / window / 1e6, 1),
        "engine_cpu_s": round(cpu, 2), "engine_cores": round(cpu / window, 2),
        "cpu_s_per_gb": round(cpu / (nbytes / 1e9), 3), "load_1min": os.getloadavg()[0],
    }


def benchmark(workers_list: Sequence[int], packets: int, rounds: int, rate: float) -> dict:
    runs: list[dict] = []
    with ReceiveBed() as bed:
        for r in range(rounds):
            shift = r % len(workers_list)  # rotate the order: drift on a shared machine hits all alike
            for workers in [*workers_list[shift:], *workers_list[:shift]]:
                result = {"round": r + 1, **measure(bed, workers, packets, rate)}
                runs.append(result)
                print(f"  round {r + 1} workers {workers}: {result['delivered_pps']:>8d} pkt/s delivered "
                      f"({result['delivered_mbit_s']:.0f} Mbit/s) of {result['sent_pps']} pkt/s sent, "
                      f"lost {result['loss_percent']:.1f}%, {result['engine_cores']:.2f} cores, "
                      f"{result['cpu_s_per_gb']:.2f} CPU s/GB, window {result['window_s']:.2f} s", flush=True)
    by_workers = {w: [x for x in runs if x["workers"] == w] for w in workers_list}
    base = workers_list[0]
    pps = {w: {x["round"]: x["delivered_pps"] for x in xs} for w, xs in by_workers.items()}
    return {
        "summary": {str(w): {key: spread([x[key] for x in xs])
                             for key in ("delivered_pps", "cpu_s_per_gb", "loss_percent", "engine_cores")}
                    for w, xs in by_workers.items()},
        "ratios": {f"{w}/{base}": spread([pps[w][r] / pps[base][r] for r in pps[base]]) for w in workers_list[1:]},
        "runs": runs,
    }


def print_table(result: dict) -> None:
    print(f"\n{'workers':>7s} {'delivered pkt/s median (min-max)':>34s} {'CPU s/GB median':>16s} "
          f"{'loss % median':>14s}")
    for workers, s in result["summary"].items():
        pps = s["delivered_pps"]
        print(f"{workers:>7s} {pps['median']:>14.0f} ({pps['min']:.0f}-{pps['max']:.0f}){'':>4s} "
              f"{s['cpu_s_per_gb']['median']:>16.2f} {s['loss_percent']['median']:>14.1f}")
    for name, ratio in result["ratios"].items():
        workers, base = name.split("/")
        print(f"delivered pkt/s, {workers} workers / {base}: {ratio['median']:.2f}x "
              f"({ratio['min']:.2f}-{ratio['max']:.2f}) per round")


# The simulator (runs in ns S).


def inner_packet(source: str) -> bytes:
    """IPv4/UDP to SINK, INNER_LENGTH bytes, valid header checksum (UDP checksum 0: none)."""
    header = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, INNER_LENGTH, 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
                                   socket.inet_aton(source), socket.inet_aton(SINK)))
    struct.pack_into(">H", header, 10, offload.checksum(offload.ones_sum(header)))
    return bytes(header) + struct.pack(">HHHH", 40000, 9, INNER_LENGTH - 20, 0) + bytes(INNER_LENGTH - 28)


def handshake(peer: SimPeer, a_public: bytes) -> tuple[socket.socket, Device]:
    """A session with A: an inner packet starts the initiation, A's response finishes it, and
    that packet, sent next, confirms the session to A."""
    endpoint = (A_UNDERLAY, PORT)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((S_UNDERLAY, peer.port))
    sock.connect(endpoint)  # no route lookup per send
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    device = Device(base64.b64decode(peer.private), rng=os.urandom)
    device.set_peer(PeerConfig(a_public, endpoint=endpoint, allowed_ips=(ipaddress.ip_network("0.0.0.0/0"),)),
                    time.monotonic())
    for datagram in device.send_packet(inner_packet(peer.source), time.monotonic()):
        sock.send(datagram.data)
    try:
        response = sock.recv(2048)
    except TimeoutError:
        raise RuntimeError(f"no handshake response from A for {peer.source}") from None
    for output in device.receive_datagram_untrusted(response, endpoint, time.monotonic()):
        if isinstance(output, Datagram):
            sock.send(output.data)
    if device.peer_status(a_public).last_handshake is None:
        raise RuntimeError(f"handshake for {peer.source} failed: {dict(device.drops)}")
    return sock, device


def preseal(device: Device, source: str, packets: int) -> list[tuple[memoryview, list[tuple[int, int, bytes]], int]]:
    """`packets` transport messages with consecutive counters, as GSO sends: (datagrams back to
    back, the UDP_SEGMENT control message, how many datagrams)."""
    sends = []
    for batch in device.seal_packets([inner_packet(source)] * packets, time.monotonic()):
        assert isinstance(batch, DatagramBatch)  # a live session: nothing waits for a handshake
        sends.append((batch.data, [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", batch.size))],
                      -(-len(batch.data) // batch.size)))
    return sends


def blast(socks: Sequence[socket.socket], sends: Sequence[Sequence[tuple]], rate: float) -> dict:
    """Every pre-sealed send once, alternating sockets (peers): paced to `rate` datagrams a
    second, or as fast as sendmsg goes if 0."""
    sent = errors = offered = 0
    start = time.monotonic()
    for row in itertools.zip_longest(*sends):
        if rate:
            ahead = start + offered / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            offered += sum(send[2] for send in row if send is not None)
        for sock, send in zip(socks, row, strict=True):
            if send is None:
                continue
            data, control, count = send
            try:
                sock.sendmsg([data], control)
                sent += count
            except OSError as e:  # a full queue drops them, as a NIC would; never sent again
                if e.errno not in (errno.ENOBUFS, errno.EAGAIN, errno.ECONNREFUSED):
                    raise
                errors += 1
    return {"sent": sent, "errors": errors, "start": start, "end": time.monotonic()}


def simulate(config_path: Path) -> int:
    """Handshake, pre-seal, print "ready", wait for "go" on stdin, blast, print the report."""
    config = json.loads(config_path.read_text())
    a_public = base64.b64decode(config["a_public"])
    peers = [SimPeer(**p) for p in config["peers"]]
    sessions = [handshake(peer, a_public) for peer in peers]
    sends = [preseal(device, peer.source, config["packets"]) for peer, (_, device) in zip(peers, sessions, strict=True)]
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    print(json.dumps(blast([sock for sock, _ in sessions], sends, config["rate"])), flush=True)
    return 0


# Command line.


def _exit_on_signal(signum: int, _frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that clean up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs per workers value (default 3)")
    parser.add_argument("--packets", type=int, default=300_000, help="packets per peer per run (default 300000)")
    parser.add_argument("--rate", type=float, default=0,
                        help="datagrams/s the simulator offers, both peers together (default 0: as fast as it "
                             "can, which takes CPU the engine could use on a small machine)")
    parser.add_argument("--workers-list", default="1,2", help="comma-separated --workers values (default 1,2)")
    parser.add_argument("--simulate", type=Path, metavar="CONFIG", help=argparse.SUPPRESS)  # the child in ns S
    args = parser.parse_args(argv)
    if args.simulate:
        try:
            return simulate(args.simulate)
        except (RuntimeError, OSError) as e:
            print(f"simulator: {e}", file=sys.stderr)
            return 1
    try:
        workers_list = [int(w) for w in args.workers_list.split(",") if w]
    except ValueError:
        parser.error("--workers-list takes comma-separated numbers")
    if not workers_list or min(workers_list) < 1 or args.rounds < 1 or args.packets < 1:
        parser.error("--workers-list values, --rounds and --packets must be at least 1")
    if os.geteuid() != 0:
        print("bench_wg_workers: needs root (network namespaces, TUN)", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    print(f"{args.rounds} rounds of workers {workers_list}, {args.packets} packets per peer per run...", flush=True)
    result: dict = {"machine": machine(),
                    "command": " ".join(["python3 -m benchmarks.bench_wg_workers", *sys.argv[1:]]),
                    "packets_per_peer": args.packets, "offered_rate": args.rate, "inner_packet_bytes": INNER_LENGTH, "rounds": args.rounds,
                    "workers_list": workers_list, "load_before": os.getloadavg()}
    try:
        result.update(benchmark(workers_list, args.packets, args.rounds, args.rate))
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        print(f"bench_wg_workers: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_wg_workers: interrupted", file=sys.stderr)
        return 130
    result["load_after"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
