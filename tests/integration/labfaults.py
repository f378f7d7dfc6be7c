"""Faults the integration tests inject into a running lab: stop a daemon or etcd, cut etcd
off from some hosts and heal the cut. `overlayctl lab` itself never does any of this."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Sequence

from overlayd.errors import KernelError, OverlaydError
from overlayd.lab.plan import ETCD_CLIENT_PORT, LabHost, LabPlan
from overlayd.lab.procs import alive, pids_naming, send_signal
from overlayd.lab.runner import daemon_pid


def stop_process(pid: int, sig: int, timeout: float, what: str) -> None:
    """Send `sig` and wait until the process is gone."""
    send_signal(pid, sig)
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            raise OverlaydError(f"{what} (pid {pid}) did not exit in {timeout:g}s")
        time.sleep(0.02)


def stop_daemon(host: LabHost, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop the host's overlayd (no-op if none runs); runner.start_daemon starts it again."""
    pid = daemon_pid(host)
    if pid is not None:
        stop_process(pid, sig, timeout, f"overlayd on {host.name}")


def stop_etcd(plan: LabPlan, timeout: float = 10.0) -> None:
    """Stop the lab's etcd (SIGTERM); its data stays for runner.start_etcd."""
    for pid in pids_naming(plan.etcd_dir):
        stop_process(pid, signal.SIGTERM, timeout, f"etcd of lab {plan.name}")


_CUT_TABLE = "overlayd_lab_cut"


def cut_etcd(plan: LabPlan, hosts: Sequence[LabHost]) -> None:
    """Make etcd silently unreachable for these hosts: their packets to etcd and etcd's to them
    are dropped (no reset, connections stay open), in the underlay namespace only."""
    addresses = ", ".join(str(h.underlay_ip) for h in hosts)
    # One nft transaction: replaces an earlier cut atomically (nothing slips through meanwhile).
    rules = f"""
table inet {_CUT_TABLE} {{}}
delete table inet {_CUT_TABLE}
table inet {_CUT_TABLE} {{
    chain input {{ type filter hook input priority 0; ip saddr {{ {addresses} }} tcp dport {ETCD_CLIENT_PORT} drop; }}
    chain output {{ type filter hook output priority 0; ip daddr {{ {addresses} }} tcp sport {ETCD_CLIENT_PORT} drop; }}
}}
"""
    result = subprocess.run(["ip", "netns", "exec", plan.underlay_netns, "nft", "-f", "-"], input=rules, text=True,
                            capture_output=True)
    if result.returncode != 0:
        raise KernelError(f"cutting etcd off in {plan.underlay_netns}: {result.stderr.strip()}")


def heal_etcd(plan: LabPlan) -> None:
    """Undo cut_etcd (a no-op when nothing is cut)."""
    subprocess.run(["ip", "netns", "exec", plan.underlay_netns, "nft", "delete", "table", "inet", _CUT_TABLE],
                   capture_output=True)
