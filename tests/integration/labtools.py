"""Lab helpers shared by the fault and state-safety tests: a paced ping flow that measures
loss and the longest silence, polling helpers around a daemon's status, and etcdctl against
the lab's etcd (reads, and the writes an operator or intruder would make)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlayd.api.client import ControlClient
from overlayd.errors import OverlaydError
from overlayd.lab.plan import LabHost, LabPlan

PING_RATE = 1000  # echoes per second in every flow
PREFIX = "/overlayd/network"  # the lab's etcd prefix


# --- a paced ping that measures loss and the longest silence ------------------------------

_PINGER = r"""
import json, os, select, signal, socket, struct, sys, time

dst, rate = sys.argv[1], float(sys.argv[2])
stop = False
def on_signal(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)

def checksum(data):
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF

sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sock.setblocking(False)
ident = os.getpid() & 0xFFFF
interval = 1 / rate
sent, replies, seen = 0, 0, set()
first = last = None
max_gap = 0.0

def receive(now):
    global replies, last, max_gap
    while True:
        try:
            data = sock.recv(2048)
        except BlockingIOError:
            return
        ihl = (data[0] & 0x0F) * 4
        kind, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if kind != 0 or rid != ident:
            continue
        (seq,) = struct.unpack("!Q", data[ihl + 8:ihl + 16])
        if seq in seen:
            continue
        seen.add(seq)
        replies += 1
        if last is not None:
            max_gap = max(max_gap, now - last)
        last = now

print("up", flush=True)
start = next_send = time.monotonic()
while not stop:
    now = time.monotonic()
    while now >= next_send:
        body = struct.pack("!Q", sent) + b"overlayd-fault-test"
        header = struct.pack("!BBHHH", 8, 0, 0, ident, sent & 0xFFFF)
        packet = struct.pack("!BBHHH", 8, 0, checksum(header + body), ident, sent & 0xFFFF) + body
        sock.sendto(packet, (dst, 0))
        sent += 1
        next_send += interval
    select.select([sock], [], [], max(0.0, next_send - time.monotonic()))
    receive(time.monotonic())
duration = time.monotonic() - start
deadline = time.monotonic() + 1.0  # stragglers
while time.monotonic() < deadline and replies < sent:
    select.select([sock], [], [], 0.05)
    receive(time.monotonic())
print(json.dumps({"sent": sent, "received": replies, "lost": sent - replies, "duration_s": duration,
                  "rate": sent / duration, "max_gap_ms": max_gap * 1000}), flush=True)
"""


@dataclass(frozen=True)
class FlowResult:
    sent: int
    received: int
    lost: int
    duration_s: float
    rate: float
    max_gap_ms: float

    def summary(self) -> str:
        return (f"{self.lost} lost of {self.sent} ({self.rate:.0f}/s over {self.duration_s:.1f}s), "
                f"longest silence {self.max_gap_ms:.1f} ms")


class PingFlow:
    """PING_RATE echoes per second from a pod to an address, until the with-block ends."""

    def __init__(self, pod_netns: str, target: str) -> None:
        self._cmd = ["ip", "netns", "exec", pod_netns, sys.executable, "-c", _PINGER, target, str(PING_RATE)]
        self.result: FlowResult | None = None

    def __enter__(self) -> PingFlow:
        self._proc = subprocess.Popen(self._cmd, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None and self._proc.stdout.readline().strip() == "up"
        time.sleep(0.5)  # a steady flow before anything happens
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)
        self._proc.send_signal(signal.SIGINT)
        out, _ = self._proc.communicate(timeout=30)
        self.result = FlowResult(**json.loads(out.strip().splitlines()[-1]))


# --- lab helpers ----------------------------------------------------------------------------

def status(host: LabHost) -> dict[str, Any]:
    return ControlClient(host.socket, timeout=10).call("status")


def components(report: dict[str, Any]) -> set[str]:
    """The components with a problem in a status report ("lease: <error> (...)" each)."""
    return {problem.split(":", 1)[0] for problem in report["problems"]}


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.05) -> float:
    """Poll until check() is truthy; returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(interval)
    return time.monotonic() - start


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def etcdctl(plan: LabPlan, *args: str) -> str:
    """Run etcdctl against the lab's etcd (from the underlay namespace); its stdout."""
    cmd = ["ip", "netns", "exec", plan.underlay_netns, "etcdctl", "--endpoints", plan.etcd_endpoint, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise OverlaydError(f"etcdctl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def cluster_leases(plan: LabPlan) -> dict[str, dict[str, Any]]:
    """subnet -> {"record": host record, "lease": etcd lease id} as etcd has them now."""
    doc = json.loads(etcdctl(plan, "get", "--prefix", f"{PREFIX}/subnets/", "-w", "json"))
    leases = {}
    for kv in doc.get("kvs", []):
        key = base64.b64decode(kv["key"]).decode()
        subnet = key.rsplit("/", 1)[1].replace("-", "/")
        leases[subnet] = {"record": json.loads(base64.b64decode(kv["value"])), "lease": kv.get("lease", 0)}
    return leases


def free_subnet(plan: LabPlan) -> str:
    """A /24 of the pod network that no host holds now (the lab's hosts get random ones): a
    record written there by a test overwrites nobody's."""
    held = set(cluster_leases(plan))
    return next(subnet for subnet in (f"10.244.{i}.0/24" for i in range(250, 0, -1)) if subnet not in held)


def subnet_key(subnet: str) -> str:
    return f"{PREFIX}/subnets/{subnet.replace('/', '-')}"


def key_exists(plan: LabPlan, key: str) -> bool:
    return bool(json.loads(etcdctl(plan, "get", key, "-w", "json")).get("kvs"))


def add_pod(host: LabHost, name: str) -> dict[str, Any]:
    return ControlClient(host.socket).call("pod.add", name=name, labels={})
