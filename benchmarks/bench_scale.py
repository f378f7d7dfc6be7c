"""Scale benchmark: one real daemon fed 100, 1,000 and 5,000 peer records (root; not a test).

  python3 -m benchmarks.bench_scale [--sizes 100,1000,5000] [--restarts 3] [--events 10]

A one-host VXLAN lab (real etcd on the simulated underlay, one overlayd in its host
namespace); the benchmark writes fake peer records straight into etcd, each on an etcd
lease of its own (distinct public IPs in 198.19.0.0/16 and VTEP MACs, /24s of the cluster
network 10.0.0.0/8). For each size, growing the same cluster:

- cold resync: stop the daemon, delete its VXLAN device (its routes, neighbours and FDB
  entries go with it), start it again; from the process start until the kernel announces
  the last of the N routes (a netlink route monitor in the host namespace), and the daemon's
  own reconcile duration (its /metrics). Neighbours and FDB are counted afterwards;
- one event to kernel: put one new record and time until its route appears in the kernel,
  then delete it and time until the route is gone (the monitor again: no polling);
- the daemon's resident memory (VmRSS, and the peak VmHWM) from /proc.

Anchor, same run: the kernel's own cost of the same N routes + neighbours + FDB entries,
written by one `bridge -batch` and one `ip -batch` into a fresh VXLAN device in a scratch
namespace. Writes benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import re
import secrets
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from overlayd.backend.objects import RTPROT_OVERLAYD
from overlayd.cluster.keys import KeyLayout
from overlayd.cluster.records import HostRecord
from overlayd.lab import runner
from overlayd.lab.plan import ETCD_CLIENT_PORT, ETCD_IP, LabHost, LabPlan, make_plan
from overlayd.netns import enter_named_netns
from overlayd.pods.nsutil import CLONE_NEWNET, setns
from tests.integration.labfaults import stop_daemon  # the same "stop one daemon of a lab" the tests use

RESULTS = Path(__file__).parent / "results" / "scale.json"
NETWORK = ipaddress.ip_network("10.0.0.0/8")  # 65,536 host /24s
PUBLIC_BASE = ipaddress.ip_address("198.19.0.0")
METRICS_PORT = 9469
RECORD_TTL = 3600  # the fake hosts' leases outlive the run; etcd's data dir goes with the lab
VXLAN_DEVICE = "ovl.vx"  # the lab daemon's default link_prefix + ".vx"
TARGETS = {"resync_s": 2.0, "event_to_kernel_ms": 50.0, "rss_mb": 120.0}


# --- netlink route monitor ------------------------------------------------------------------

RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTA_DST = 1
_NLMSG = struct.Struct("=LHHLL")
_RTMSG = struct.Struct("=BBBBBBBBL")
_RTA = struct.Struct("=HH")


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the calling thread in namespace `name` for a while (sockets made there stay there)."""
    with open("/proc/thread-self/ns/net", "rb") as home, open(f"/run/netns/{name}", "rb") as there:
        setns(there.fileno(), CLONE_NEWNET)
        try:
            yield
        finally:
            setns(home.fileno(), CLONE_NEWNET)


class RouteMonitor:
    """The kernel's own announcements of IPv4 routes with our protocol, parsed by hand:
    cheap enough that watching thousands of them barely competes with the daemon for CPU."""

    def __init__(self, netns: str) -> None:
        with in_netns(netns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE: no drops in a burst
        self.sock.bind((0, RTMGRP_IPV4_ROUTE))

    def close(self) -> None:
        self.sock.close()

    def events(self, deadline: float) -> Iterator[tuple[float, int, ipaddress.IPv4Network]]:
        """(arrival time, RTM_NEWROUTE or RTM_DELROUTE, dst) until the deadline."""
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.sock], [], [], left)[0]:
                return
            data = self.sock.recv(1 << 20)
            now = time.monotonic()
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, kind = _NLMSG.unpack_from(data, offset)[:2]
                if kind in (RTM_NEWROUTE, RTM_DELROUTE):
                    dst = _route_dst(data, offset + _NLMSG.size, offset + length)
                    if dst is not None:
                        yield now, kind, dst
                offset += (length + 3) & ~3

    def drain(self) -> None:
        list(self.events(time.monotonic() + 0.05))


def _route_dst(data: bytes, start: int, end: int) -> ipaddress.IPv4Network | None:
    family, dst_len, _, _, _, protocol = _RTMSG.unpack_from(data, start)[:6]
    if family != socket.AF_INET or protocol != RTPROT_OVERLAYD:
        return None
    offset = start + _RTMSG.size
    while offset + _RTA.size <= end:
        length, kind = _RTA.unpack_from(data, offset)
        if kind == RTA_DST:
            return ipaddress.ip_network((data[offset + 4: offset + 8], dst_len))
        offset += (length + 3) & ~3
    return None


# --- the fake peers ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FakePeer:
    index: int
    subnet: ipaddress.IPv4Network

    @property
    def record(self) -> HostRecord:
        mac = "02:5c:{:02x}:{:02x}:{:02x}:{:02x}".format(*self.index.to_bytes(4, "big"))
        return HostRecord(f"peer{self.index}", PUBLIC_BASE + self.index, {"type": "vxlan", "vtep_mac": mac})


class Writer:
    """Writes fake host records into the lab's etcd, each under an etcd lease of its own."""

    def __init__(self, own_subnet: ipaddress.IPv4Network) -> None:
        import etcd3  # after the process entered the underlay namespace: grpc's threads live there

        self.etcd = etcd3.client(str(ETCD_IP), ETCD_CLIENT_PORT, timeout=10)
        self.layout = KeyLayout()
        self.own = own_subnet
        self.leases: dict[ipaddress.IPv4Network, Any] = {}
        self._next = 1

    def new_peer(self) -> FakePeer:
        while True:
            index = self._next
            self._next += 1
            subnet = ipaddress.ip_network((int(NETWORK.network_address) + index * 256, 24))
            if subnet != self.own:
                return FakePeer(index, subnet)

    def put(self, peer: FakePeer) -> None:
        lease = self.etcd.lease(RECORD_TTL)
        self.etcd.put(self.layout.subnet_key(peer.subnet), peer.record.to_json(), lease=lease)
        self.leases[peer.subnet] = lease

    def put_many(self, count: int) -> None:
        """Leases one by one, keys in transactions of 100 (etcd's limit is 128 operations)."""
        peers = [self.new_peer() for _ in range(count)]
        for start in range(0, count, 100):
            puts = []
            for peer in peers[start:start + 100]:
                lease = self.etcd.lease(RECORD_TTL)
                self.leases[peer.subnet] = lease
                puts.append(self.etcd.transactions.put(self.layout.subnet_key(peer.subnet), peer.record.to_json(),
                                                       lease=lease))
            self.etcd.transaction(compare=[], success=puts, failure=[])

    def delete(self, peer: FakePeer) -> None:
        self.leases.pop(peer.subnet).revoke()  # the key goes with its lease, as when a host dies


# --- measurements -----------------------------------------------------------------------------

def _summary(values: list[float], digits: int) -> dict[str, Any]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "all": [round(v, digits) for v in values]}


def _metrics(host: LabHost) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{host.underlay_ip}:{METRICS_PORT}/metrics", timeout=5).read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(overlayd_\w+?(?:_sum|_count)) (\S+)$", text, re.M)}


def _memory_mb(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
            "peak_rss_mb": round(int(fields["VmHWM"].split()[0]) / 1024, 1)}


def _count(netns: str, *cmd: str, having: str = "") -> int:
    out = subprocess.run([cmd[0], "-n", netns, *cmd[1:]], capture_output=True, text=True, check=True).stdout
    return sum(having in line for line in out.splitlines())


def kernel_counts(host: LabHost) -> dict[str, int]:
    ns = host.netns
    return {"routes": _count(ns, "ip", "route", "show", "proto", str(RTPROT_OVERLAYD)),
            "neighbours": _count(ns, "ip", "neigh", "show", "dev", VXLAN_DEVICE, "nud", "permanent"),
            "fdb": _count(ns, "bridge", "fdb", "show", "dev", VXLAN_DEVICE, having=" dst ")}


def _start_daemon(plan: LabPlan, host: LabHost) -> None:
    runner.start_daemon(plan, host, "--metrics-address", f"{host.underlay_ip}:{METRICS_PORT}")


def wait_for_routes(host: LabHost, peers: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while kernel_counts(host)["routes"] < peers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the daemon did not program {peers} peers in {timeout:g} s")
        time.sleep(0.5)


def measure_resync(plan: LabPlan, host: LabHost, peers: int, rounds: int) -> dict[str, Any]:
    """Cold restarts: the daemon programs all N peers into an empty kernel."""
    to_kernel, reconcile, ready = [], [], []
    for _ in range(rounds):
        stop_daemon(host)
        subprocess.run(["ip", "-n", host.netns, "link", "del", VXLAN_DEVICE], check=True)
        monitor = RouteMonitor(host.netns)
        try:
            started = time.monotonic()
            _start_daemon(plan, host)
            seen: set[ipaddress.IPv4Network] = set()
            last = started
            for at, kind, dst in monitor.events(started + 60):
                if kind == RTM_NEWROUTE:
                    seen.add(dst)
                    last = at
                    if len(seen) >= peers:
                        break
        finally:
            monitor.close()
        if len(seen) < peers:
            raise RuntimeError(f"only {len(seen)} of {peers} routes after 60 s")
        to_kernel.append(last - started)
        runner.wait_ready(host)
        ready.append(time.monotonic() - started)
        metrics = _metrics(host)  # a fresh process: its first reconcile(s) only
        reconcile.append(metrics["overlayd_reconcile_duration_seconds_sum"]
                         / max(1.0, metrics["overlayd_reconcile_duration_seconds_count"]))
    counts = kernel_counts(host)
    if min(counts.values()) < peers:
        raise RuntimeError(f"kernel incomplete after resync: {counts}")
    return {"start_to_all_routes_s": _summary(to_kernel, 3), "daemon_reconcile_s": _summary(reconcile, 3),
            "start_to_ready_s": _summary(ready, 3), "kernel_after": counts}


def measure_events(writer: Writer, host: LabHost, rounds: int) -> dict[str, Any]:
    """One new record -> its route; its deletion -> the route gone."""
    before = _metrics(host)
    monitor = RouteMonitor(host.netns)
    added, removed = [], []
    try:
        for _ in range(rounds):
            peer = writer.new_peer()
            for op, kind, out in ((writer.put, RTM_NEWROUTE, added), (writer.delete, RTM_DELROUTE, removed)):
                monitor.drain()
                started = time.monotonic()
                op(peer)
                seen = next((at for at, k, dst in monitor.events(started + 30) if k == kind and dst == peer.subnet),
                            None)
                if seen is None:
                    raise RuntimeError(f"no kernel route event for {peer.subnet} in 30 s")
                out.append((seen - started) * 1000)
                time.sleep(0.3)  # let the daemon settle (cool-down write, metrics) before the next one
    finally:
        monitor.close()
    after = _metrics(host)
    name = "overlayd_event_to_kernel_seconds"
    count = after[f"{name}_count"] - before[f"{name}_count"]
    daemon_ms = (after[f"{name}_sum"] - before[f"{name}_sum"]) / max(1.0, count) * 1000
    return {"add_ms": _summary(added, 1), "delete_ms": _summary(removed, 1),
            "daemon_event_to_kernel_mean_ms": round(daemon_ms, 1), "daemon_events": int(count)}


def measure_anchor(name: str, peers: int, rounds: int) -> dict[str, Any]:
    """The same routes, neighbours and FDB entries by iproute2 batches: what the kernel needs."""
    ns = f"{name}-anc"
    fdb = [f"fdb append {FakePeer(i, _subnet(i)).record.backend['vtep_mac']} dev vx dst {PUBLIC_BASE + i}"
           f" self permanent" for i in range(1, peers + 1)]
    ip_lines = []
    for i in range(1, peers + 1):
        subnet = _subnet(i)
        mac = FakePeer(i, subnet).record.backend["vtep_mac"]
        ip_lines.append(f"neigh replace {subnet.network_address} lladdr {mac} dev vx nud permanent")
        ip_lines.append(f"route replace {subnet} via {subnet.network_address} dev vx onlink proto {RTPROT_OVERLAYD}")
    times = []
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for _ in range(rounds):
            for cmd in (["link", "add", "vx", "type", "vxlan", "id", "1", "dstport", "4789", "local", "198.18.0.11",
                         "nolearning"], ["link", "set", "vx", "up"], ["addr", "add", "10.0.0.0/32", "dev", "vx"]):
                subprocess.run(["ip", "-n", ns, *cmd], check=True)
            started = time.monotonic()
            subprocess.run(["bridge", "-n", ns, "-batch", "-"], input="\n".join(fdb), text=True, check=True)
            subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(ip_lines), text=True, check=True)
            times.append(time.monotonic() - started)
            if _count(ns, "ip", "route", "show", "proto", str(RTPROT_OVERLAYD)) != peers:
                raise RuntimeError("anchor: routes missing")
            subprocess.run(["ip", "-n", ns, "link", "del", "vx"], check=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return {"ip_batch_s": _summary(times, 3)}


def _per_peer(size: int, resync: dict[str, Any], events: dict[str, Any], anchor: dict[str, Any]) -> dict[str, Any]:
    """Cost per peer, to read the growth off: flat means linear."""
    reconcile = resync["daemon_reconcile_s"]["median"]
    return {"reconcile_ms": round(reconcile * 1000 / size, 3),
            "event_us": round(events["add_ms"]["median"] * 1000 / size, 1),
            "ip_batch_ms": round(anchor["ip_batch_s"]["median"] * 1000 / size, 3),
            "reconcile_vs_ip_batch": round(reconcile / anchor["ip_batch_s"]["median"], 1)}


def _subnet(index: int) -> ipaddress.IPv4Network:
    return ipaddress.ip_network((int(NETWORK.network_address) + index * 256, 24))


# --- main -------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--events", type=int, default=10)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    load_before = os.getloadavg()[0]
    base = Path(tempfile.mkdtemp(prefix="ovl-bench-"))
    name = f"s{secrets.token_hex(3)}"
    plan = make_plan(name, 1, "vxlan", base)
    host = plan.hosts[0]
    rows = []
    try:
        runner.build(plan, ["--cidr", str(NETWORK)])
        # The whole process moves to the underlay (before any thread exists), so the etcd
        # client and the daemon's metrics endpoint are reachable; `ip -n` works from anywhere.
        enter_named_netns(plan.underlay_netns)
        _start_daemon(plan, host)
        status = runner.wait_ready(host)
        writer = Writer(ipaddress.ip_network(status["subnet"]))
        for size in sizes:
            print(f"{size} peers: writing records ...", file=sys.stderr)
            writer.put_many(size - len(writer.leases))
            wait_for_routes(host, size)  # the running daemon caught up: stopping it never cuts a reconcile short
            print(f"{size} peers: cold restarts ...", file=sys.stderr)
            resync = measure_resync(plan, host, size, args.restarts)
            print(f"{size} peers: events ...", file=sys.stderr)
            events = measure_events(writer, host, args.events)
            pid = runner.daemon_pid(host)
            assert pid is not None
            anchor = measure_anchor(name, size, args.restarts)
            rows.append({"peers": size, "resync": resync, "event": events, "memory": _memory_mb(pid),
                         "anchor": anchor, "per_peer": _per_peer(size, resync, events, anchor)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        runner.down(name, base)
        shutil.rmtree(base, ignore_errors=True)
    report = {"sizes": rows, "targets": TARGETS,
              "machine": {"cores": os.cpu_count(), "load_average_1m_before": round(load_before, 2),
                          "load_average_1m_after": round(os.getloadavg()[0], 2)}}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        r, e, m, a = row["resync"], row["event"], row["memory"], row["anchor"]
        print(f"{row['peers']:>5} peers: start->all routes {r['start_to_all_routes_s']['median']} s "
              f"(daemon reconcile {r['daemon_reconcile_s']['median']} s; ip -batch {a['ip_batch_s']['median']} s), "
              f"event->kernel {e['add_ms']['median']} ms ({e['add_ms']['min']}-{e['add_ms']['max']}), "
              f"delete {e['delete_ms']['median']} ms, RSS {m['rss_mb']} MB (peak {m['peak_rss_mb']})")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
