"""What one change costs the worker processes of overlayd-wg, by mesh size: the control's
update (only the peers that changed) against the whole snapshot it sent before.

A change is one peer's handshake, the commonest one (every peer rekeys every 2 minutes: 2,000
peers make about 17 a second). Per change, timed in one process: building the message in the
control, pickling it (what the pipe to a worker carries), unpickling it and applying it in a
WorkerPlane; the bytes are the pickle's size. Each peer has a real session (a handshake with a
sans-I/O Device of its own), allowed IPs and an endpoint, as in a cluster.

Run from the repository root (no root needed, no network):

    python3 -m benchmarks.bench_wg_plane [--peers 100,500,2000] [--changes 50] [--rounds 5]

Writes benchmarks/results/wg_plane.json and prints a table.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import pickle
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.bench_wg_workers import SINK_NET, inner_packet
from benchmarks.bench_wireguard import machine, spread
from overlayd.wireguard import Device, PeerConfig, crypto
from overlayd.wireguard.counters import CounterSpace
from overlayd.wireguard.plane import PlaneSnapshot, WorkerPlane

RESULTS = Path(__file__).resolve().parent / "results" / "wg_plane.json"
SHARDS = 2
CONTROL_ADDR = ("::ffff:198.18.0.1", 51820, 0, 0)


class Mesh:
    """A sharded control Device with `size` peers, each a Device of its own with a session."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.rng = rng.randbytes
        # Handshakes 10 ms apart: 100 a second stays under the control's "under load" mark (128).
        self.now = 0.0
        self.control = Device(crypto.generate_private_key(self.rng), rng=self.rng, shards=SHARDS,
                              counters=CounterSpace(4 * size + 16))
        self.control.set_peer(PeerConfig(crypto.public_key(crypto.private_key_object(
            crypto.generate_private_key(self.rng)))), 0.0)  # placeholder so the peers start at shard 1
        self.peers: list[tuple[Device, tuple]] = []
        for i in range(size):
            peer = Device(crypto.generate_private_key(self.rng), rng=self.rng)
            address = (f"::ffff:198.18.{4 + i // 250}.{1 + i % 250}", 51820, 0, 0)
            assert peer.public_key is not None and self.control.public_key is not None
            self.control.set_peer(PeerConfig(peer.public_key, endpoint=address,
                                             allowed_ips=(ipaddress.ip_network(f"10.{i // 256}.{i % 256}.0/24"),)), 0.0)
            peer.set_peer(PeerConfig(self.control.public_key, endpoint=CONTROL_ADDR,
                                     allowed_ips=(ipaddress.ip_network(SINK_NET),)), 0.0)
            self.peers.append((peer, address))
            self.handshake(i)

    def handshake(self, i: int) -> None:
        """Peer i initiates; the control answers; peer i completes: one peer's sessions change."""
        self.now = now = self.now + 0.01
        peer, address = self.peers[i]
        source = f"10.{i // 256}.{i % 256}.1"
        for initiation in peer.send_packet(inner_packet(source), now):
            for response in self.control.receive_datagram_untrusted(bytes(initiation.data), address, now):
                peer.receive_datagram_untrusted(bytes(response.data), CONTROL_ADDR, now)


def per_change(mesh: Mesh, take: Callable[[], PlaneSnapshot], changes: int) -> dict:
    """Seconds per change for control (build + pickle) and worker (unpickle + apply), and bytes."""
    worker = WorkerPlane(1, SHARDS, CounterSpace(1))
    worker.apply(mesh.control.plane_snapshot(), 0.0)
    mesh.control.plane_update()  # from here on, updates are what changed
    control_s = worker_s = 0.0
    sizes = []
    for n in range(changes):
        if n % len(mesh.peers) == 0:
            mesh.now += 130.0  # past REKEY_AFTER_TIME since each peer's last: a send rekeys
        before = mesh.control.generation
        mesh.handshake(n % len(mesh.peers))
        assert mesh.control.generation != before, "a handshake that changed nothing"
        t0 = time.perf_counter()
        data = pickle.dumps(take(), protocol=pickle.HIGHEST_PROTOCOL)
        t1 = time.perf_counter()
        worker.apply(pickle.loads(data), mesh.now)
        t2 = time.perf_counter()
        control_s += t1 - t0
        worker_s += t2 - t1
        sizes.append(len(data))
    return {"control_ms": control_s * 1e3 / changes, "worker_ms": worker_s * 1e3 / changes,
            "bytes": statistics.median(sizes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", default="100,500,2000", help="mesh sizes, comma-separated")
    parser.add_argument("--changes", type=int, default=50, help="handshakes timed per size and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.peers.split(",")]
    except ValueError:
        parser.error("--peers takes sizes like 100,500,2000")
    if not sizes or min(sizes) < 1 or args.changes < 1 or args.rounds < 1:
        parser.error("--peers, --changes and --rounds must be positive")
    result: dict = {"machine": machine(),
                    "command": f"python3 -m benchmarks.bench_wg_plane --peers {args.peers} "
                               f"--changes {args.changes} --rounds {args.rounds}",
                    "sizes": {}}
    print(f"{'peers':>6s} {'message':>8s} {'control ms':>11s} {'worker ms':>10s} {'bytes':>9s}")
    for size in sizes:
        mesh = Mesh(size, random.Random(size))
        rows: dict[str, list[dict]] = {"update": [], "whole": []}
        for round_ in range(args.rounds):
            for kind in (("update", "whole") if round_ % 2 == 0 else ("whole", "update")):
                take = mesh.control.plane_update if kind == "update" else mesh.control.plane_snapshot
                rows[kind].append(per_change(mesh, take, args.changes))
        entry = {kind: {key: spread([r[key] for r in runs]) for key in runs[0]} for kind, runs in rows.items()}
        entry["whole / update, per change (control + worker)"] = spread(
            [(w["control_ms"] + w["worker_ms"]) / (u["control_ms"] + u["worker_ms"])
             for w, u in zip(rows["whole"], rows["update"])])
        result["sizes"][str(size)] = entry
        for kind in ("whole", "update"):
            e = entry[kind]
            print(f"{size:6d} {kind:>8s} {e['control_ms']['median']:11.3f} {e['worker_ms']['median']:10.3f} "
                  f"{e['bytes']['median']:9.0f}", flush=True)
        ratio = entry["whole / update, per change (control + worker)"]
        print(f"{'':6s} whole / update: {ratio['median']:.1f}x ({ratio['min']:.1f}-{ratio['max']:.1f})", flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
