"""Finding and signalling the lab's processes: by what their command line names, or by
the lab namespace they run in.

The lab starts its daemons, etcd and probes in sessions of their own (they outlive
`lab up`), so it finds them again through /proc, by a path only they carry: the lab
dir, a host's config file, etcd's data dir.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from pathlib import Path


def pids_naming(path: Path) -> list[int]:
    """Processes with `path`, or a path under it, as one of their arguments."""
    needle = str(path).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if any(arg == needle or arg.startswith(needle + b"/") for arg in cmdline.split(b"\0")):
            pids.append(int(entry.name))
    return pids


def send_signal(pid: int, sig: int) -> None:
    """Signal a process; one that is gone already is fine."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def alive(pid: int) -> bool:
    """True while the process runs (a zombie counts as gone)."""
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child (a failed `up`)
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_netns_processes(namespaces: Sequence[str], netns_dir: Path) -> int:
    """Whatever still runs inside the lab's namespaces though its command line does not name
    the lab dir (wireguard-go: `wireguard-go -f ovl.wg`); it would keep a deleted namespace alive."""
    wanted = set()
    for ns in namespaces:
        try:
            st = (netns_dir / ns).stat()
        except OSError:
            continue
        wanted.add((st.st_dev, st.st_ino))
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            st = (entry / "ns" / "net").stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in wanted:
            pids.append(int(entry.name))
    for pid in pids:
        send_signal(pid, signal.SIGKILL)  # the lab's own processes got SIGTERM already
    return len(pids)
