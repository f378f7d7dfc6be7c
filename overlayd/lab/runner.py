"""lab up / status / down: a whole cluster of simulated hosts on one machine.

`up` builds the underlay and the hosts (topology.py), starts etcd on the
underlay and one overlayd per host (each inside its host namespace, with its
own dirs, socket and name prefixes), adds a pod per host and checks every pod
pair over ICMP and TCP. `down` finds everything through the lab's directory,
so it works after a failed `up` and running it twice is harmless.

Namespaces are ours by record, never by name alone (DESIGN.md): `build` notes
each one in the lab dir before creating it, and a pod's namespace is ours when
its daemon made the pod's directory under the lab dir. Anything else that
merely starts with the lab's name is left alone.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from overlayd.api.client import ControlClient
from overlayd.cli.settings import isolated_env  # the lab's overlayctl runs ignore the caller's settings
from overlayd.lab.etcd_process import EtcdProcess
from overlayd.lab.procs import alive, kill_netns_processes, pids_naming, send_signal
from overlayd.errors import ConflictError, OverlaydError
from overlayd.lab import topology
from overlayd.pods.nsutil import umount2
from overlayd.lab.plan import (
    ETCD_CLIENT_PORT,
    ETCD_IP,
    ETCD_PEER_PORT,
    PROBE_PORT,
    LabHost,
    LabPlan,
    daemon_config_toml,
    make_plan,
)

log = logging.getLogger(__name__)

LAB_LEASE_TTL = 15  # short, so a lab host that dies is noticed quickly
_DAEMON_READY_TIMEOUT = 30.0
_MATRIX_TIMEOUT = 30.0

Matrix = dict[str, dict[str, dict[str, Any]]]

_NETNS_MANIFEST = "namespaces"  # in the lab dir: one namespace the lab created per line


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _overlayctl(host: LabHost, *args: str) -> list[str]:
    return _python("overlayd.cli.main", "--socket", str(host.socket), *args)


# --- up ---------------------------------------------------------------------

def up(plan: LabPlan) -> dict[str, Any]:
    if plan.dir.exists() or any(topology.netns_exists(n) for n in plan.netns_names):
        raise ConflictError(f"lab {plan.name!r} is already up (or left over): run `overlayctl lab down --name {plan.name}`")
    try:
        build(plan)
        for host in plan.hosts:
            start_daemon(plan, host)
        for host in plan.hosts:
            wait_ready(host)
        for host in plan.hosts:
            ControlClient(host.socket).call("pod.add", name=host.pod_name, labels={"lab": plan.name})
            _start_probe_server(plan, host)
        return status(plan, wait_for_matrix=True)
    except BaseException:
        down(plan.name, plan.dir.parent)
        raise


def build(plan: LabPlan, network_args: Sequence[str] = ()) -> None:
    """The lab without daemons: underlay, hosts, etcd and the cluster config
    (network_args go to `overlayctl network init`, e.g. a small --cidr)."""
    plan.dir.mkdir(parents=True)
    _write_state(plan)
    _claim_netns(plan, plan.underlay_netns)
    topology.create_underlay(plan)
    _claim_netns(plan, plan.outside_netns)
    topology.create_outside(plan)
    for host in plan.hosts:
        _claim_netns(plan, host.netns)
        topology.create_host(plan, host)
    start_etcd(plan)
    _init_network(plan, network_args)


def _write_state(plan: LabPlan) -> None:
    state = {"name": plan.name, "backend": plan.backend, "hosts": len(plan.hosts)}
    plan.state_path.write_text(json.dumps(state) + "\n")


def _claim_netns(plan: LabPlan, name: str) -> None:
    """Record a namespace as the lab's before creating it (so a crash midway cannot leak it);
    one that exists already is someone else's, and stays theirs."""
    if topology.netns_exists(name):
        raise ConflictError(f"namespace {name} exists already and is not lab {plan.name!r}'s")
    with (plan.dir / _NETNS_MANIFEST).open("a") as manifest:
        manifest.write(name + "\n")


def _spawn(cmd: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log_file:
        # A session of its own: the lab outlives the `lab up` command.
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                start_new_session=True, env=isolated_env())


def start_etcd(plan: LabPlan) -> None:
    """Start the lab's etcd (again: its data dir keeps the cluster) and wait until it is healthy."""
    etcd = EtcdProcess(plan.etcd_dir, str(ETCD_IP), ETCD_CLIENT_PORT, ETCD_PEER_PORT,
                       netns=plan.underlay_netns, log_path=plan.dir / "etcd.log")
    etcd.start()


def _init_network(plan: LabPlan, network_args: Sequence[str] = ()) -> None:
    cmd = ["ip", "netns", "exec", plan.underlay_netns] + _python(
        "overlayd.cli.main", "network", "init", "--etcd-endpoints", plan.etcd_endpoint,
        "--backend", plan.backend, *network_args)
    result = subprocess.run(cmd, capture_output=True, text=True, env=isolated_env())
    if result.returncode != 0:
        raise OverlaydError(f"network init failed: {result.stderr.strip()}")


def start_daemon(plan: LabPlan, host: LabHost, *args: str, extra_config: str = "") -> None:
    """Start the host's daemon; `args` are extra overlayd flags (e.g. --renumber), extra_config
    TOML tables appended to its config file (e.g. a [trust] section)."""
    host.dir.mkdir(parents=True, exist_ok=True)
    host.config_path.write_text(daemon_config_toml(plan, host, LAB_LEASE_TTL) + extra_config)
    _spawn(_python("overlayd.daemon", "--config", str(host.config_path), *args), host.log_path)


def wait_ready(host: LabHost) -> dict[str, Any]:
    deadline = time.monotonic() + _DAEMON_READY_TIMEOUT
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            status = ControlClient(host.socket, timeout=5).call("status")
            if status.get("ready"):
                return status
        except OverlaydError as exc:
            last_error = exc
        time.sleep(0.1)
    tail = host.log_path.read_text(errors="replace")[-2000:] if host.log_path.exists() else ""
    raise OverlaydError(f"overlayd on {host.name} not ready after {_DAEMON_READY_TIMEOUT:g}s "
                        f"({last_error}); log tail:\n{tail}")


def _start_probe_server(plan: LabPlan, host: LabHost) -> None:
    # Through `pod exec`, so the server runs in the pod's net, uts and ipc
    # namespaces exactly as a container would. The lab dir tags the process
    # so `down` can find it.
    cmd = _overlayctl(host, "pod", "exec", host.pod_name, "--") + _python(
        "overlayd.lab.probe", "serve", str(PROBE_PORT), str(plan.dir))
    _spawn(cmd, host.dir / "probe.log")


# --- status -----------------------------------------------------------------

def status(plan: LabPlan, *, wait_for_matrix: bool = False) -> dict[str, Any]:
    hosts, pods = [], []
    for host in plan.hosts:
        try:
            daemon = ControlClient(host.socket, timeout=5).call("status")
            host_pods = ControlClient(host.socket, timeout=5).call("pod.list")
        except OverlaydError as exc:
            daemon, host_pods = {"error": str(exc)}, []
        hosts.append({"name": host.name, "netns": host.netns, "underlay_ip": str(host.underlay_ip),
                      "subnet": daemon.get("subnet"), "socket": str(host.socket),
                      "peers": daemon.get("peers"), "health": daemon.get("health", daemon.get("error"))})
        pods += [{"name": p["name"], "host": host.name, "netns": p["netns"], "ip": p["ip"]} for p in host_pods]
    matrix = _check_matrix(plan, pods, wait=wait_for_matrix)
    ok = bool(pods) and all(r["icmp"] and r["tcp"] for row in matrix.values() for r in row.values())
    return {"name": plan.name, "backend": plan.backend, "etcd": plan.etcd_endpoint,
            "hosts": hosts, "pods": pods, "matrix": matrix, "ok": ok}


def _probe_from(plan: LabPlan, pod: dict[str, Any], targets: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    host = next(h for h in plan.hosts if h.name == pod["host"])
    cmd = _overlayctl(host, "pod", "exec", pod["name"], "--") + _python(
        "overlayd.lab.probe", "check", str(PROBE_PORT), *[t["ip"] for t in targets])
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=isolated_env())
    by_ip = json.loads(result.stdout) if result.returncode == 0 else {}
    unreached = {"icmp": False, "tcp": False, "tcp_hostname": None}  # the probe's shape (probe.py)
    return {t["name"]: by_ip.get(t["ip"], unreached) for t in targets}


def _check_matrix(plan: LabPlan, pods: list[dict[str, Any]], *, wait: bool) -> Matrix:
    """Every pod probes every other pod; with wait, retry until all pass or time runs out."""
    deadline = time.monotonic() + (_MATRIX_TIMEOUT if wait else 0)
    while True:
        with ThreadPoolExecutor(max_workers=8) as pool:
            rows = pool.map(lambda src: (src["name"], _probe_from(plan, src, [p for p in pods if p is not src])),
                            pods)
            matrix = dict(rows)
        complete = all(r["icmp"] and r["tcp"] for row in matrix.values() for r in row.values())
        if complete or time.monotonic() >= deadline:
            return matrix
        time.sleep(0.5)


# --- down -------------------------------------------------------------------

def down(name: str, base_dir: Path) -> dict[str, Any]:
    lab_dir = base_dir / name
    killed = _kill_lab_processes(lab_dir)
    # Pods first: they are the daemons' (gone now), made inside the host namespaces' world.
    pod_namespaces = _pod_netns(name, lab_dir)
    for ns in pod_namespaces:
        topology.delete_netns_etc(ns)
    namespaces = [ns for ns in pod_namespaces + _recorded_netns(lab_dir) if topology.netns_exists(ns)]
    killed += kill_netns_processes(namespaces, topology.NETNS_DIR)
    for ns in namespaces:
        topology.delete_netns(ns)
    unmounted = _unmount_under(lab_dir)
    shutil.rmtree(lab_dir, ignore_errors=True)
    return {"name": name, "processes_stopped": killed, "namespaces_removed": namespaces,
            "mounts_removed": unmounted}


def _recorded_netns(lab_dir: Path) -> list[str]:
    try:
        return [line for line in (lab_dir / _NETNS_MANIFEST).read_text().splitlines() if line]
    except FileNotFoundError:
        return []


def _pod_netns(name: str, lab_dir: Path) -> list[str]:
    """Namespaces of the pods the lab's daemons made: each pod has a directory in its host's
    pod run dir (made before its namespace) and a namespace named by the host's prefix."""
    try:
        state = json.loads((lab_dir / "lab.json").read_text())
        plan = make_plan(name, state["hosts"], state["backend"], lab_dir.parent)
    except (OSError, ValueError, KeyError, TypeError, OverlaydError):
        return []  # no record of the hosts: their daemons never ran
    names = []
    for host in plan.hosts:
        pods_dir = host.dir / "run" / "pods"  # the daemon's pod_run_dir (run_dir in daemon_config_toml)
        if pods_dir.is_dir():
            names += [host.pod_netns_prefix + p.name for p in sorted(pods_dir.iterdir()) if p.is_dir()]
    return names


def daemon_pid(host: LabHost) -> int | None:
    """The overlayd serving this lab host, found by its config path (for the fault tests and
    benchmarks/bench_cluster.py, which watch or stop one daemon of a running lab)."""
    pids = pids_naming(host.config_path)
    return pids[0] if pids else None


def _kill_lab_processes(lab_dir: Path) -> int:
    """Daemons, etcd, engines and probes: every process whose command line names the lab dir."""
    pids = pids_naming(lab_dir)
    for pid in pids:
        send_signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            send_signal(pid, signal.SIGKILL)
    return len(pids)


def _unmount_under(lab_dir: Path) -> int:
    """Pods' uts/ipc namespace bind mounts live under the lab dir; detach them all."""
    prefix = str(lab_dir) + "/"
    with open("/proc/self/mountinfo") as fh:
        # Field 5 is the mount point, with spaces and such escaped as octal.
        points = [line.split()[4].encode().decode("unicode_escape") for line in fh]
    mounts = [p for p in points if p.startswith(prefix)]
    for point in sorted(mounts, key=len, reverse=True):
        umount2(point, missing_ok=True)
    return len(mounts)
