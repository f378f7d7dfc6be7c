"""A single-member etcd server as a child process, for the lab and the tests.

It listens on one client address and one peer port, keeps its data in a directory
the caller owns, and can run inside a named network namespace (`ip netns exec`), so
lab hosts reach it over the simulated underlay as real hosts would. With `tls=EtcdTls(...)`
the client URL is https and, when a CA is given, clients must present a certificate it
signed (mutual TLS); the peer URL stays plain, as a single member has no peers.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from overlayd.errors import ClusterError

# Probe run inside the namespace: the test process itself cannot reach an address
# that only exists there. Exit status 0 means "healthy".
# Arguments: URL [CA CERT KEY] ("-" for none).
_PROBE = """
import json, ssl, sys, urllib.request
ca, cert, key = [None if a == "-" else a for a in (sys.argv[2:] or ["-", "-", "-"])]
context = None
if sys.argv[1].startswith("https:"):
    context = ssl.create_default_context(cafile=ca)
    if cert:
        context.load_cert_chain(cert, key)
try:
    with urllib.request.urlopen(sys.argv[1], timeout=1, context=context) as r:
        sys.exit(0 if json.load(r).get("health") == "true" else 1)
except Exception:
    sys.exit(1)
"""


@dataclass(frozen=True)
class EtcdTls:
    """TLS for etcd's client URL.

    cert_file/key_file: the server's certificate (its SANs must name the client host).
    ca_file: clients must present a certificate signed by this CA (--client-cert-auth);
    None: any client may connect over TLS. The health probe trusts ca_file (or the system's
    roots) for the server and presents probe_cert_file/probe_key_file when given.
    """

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    probe_cert_file: Path | None = None
    probe_key_file: Path | None = None

    def flags(self) -> list[str]:
        argv = ["--cert-file", str(self.cert_file), "--key-file", str(self.key_file)]
        if self.ca_file is not None:
            argv += ["--trusted-ca-file", str(self.ca_file), "--client-cert-auth"]
        return argv

    def probe_args(self) -> list[str]:
        return [str(p) if p is not None else "-" for p in (self.ca_file, self.probe_cert_file, self.probe_key_file)]

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.probe_cert_file is not None:
            context.load_cert_chain(str(self.probe_cert_file), str(self.probe_key_file) if self.probe_key_file else None)
        return context


def _listens(pid: int, port: int) -> bool:
    """Whether process pid has a listening TCP socket on port (in its own network namespace)."""
    try:
        sockets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        tables = [Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:] for name in ("tcp", "tcp6")]
    except OSError:  # the process is gone, or closed an fd while we looked
        return False
    for line in (line for table in tables for line in table):
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port and f"socket:[{inode}]" in sockets:
            return True
    return False


class EtcdProcess:
    def __init__(
        self,
        data_dir: Path,
        client_host: str,
        client_port: int,
        peer_port: int,
        *,
        netns: str | None = None,
        log_path: Path | None = None,
        name: str = "overlayd-etcd",
        tls: EtcdTls | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.client_host = client_host
        self.client_port = client_port
        self.peer_port = peer_port
        self.netns = netns
        self.log_path = Path(log_path) if log_path else self.data_dir.with_name(self.data_dir.name + ".log")
        self.name = name
        self.tls = tls
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self._url_host}:{self.client_port}"

    @property
    def _url_host(self) -> str:
        return f"[{self.client_host}]" if ":" in self.client_host else self.client_host

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command(self) -> list[str]:
        peer_url = f"http://{self._url_host}:{self.peer_port}"
        argv = [
            "etcd",
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"{self.name}={peer_url}",
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip
        if self.tls:
            argv += self.tls.flags()
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    def start(self, timeout: float = 15.0) -> None:
        """Start etcd and return once it answers /health; raise ClusterError with the log tail otherwise."""
        if self._proc is not None:
            raise ClusterError(f"etcd at {self.endpoint} is already running (pid {self._proc.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # A session of its own: a Ctrl-C meant for the test run must not kill etcd
            # before teardown has revoked leases and stopped the daemons that use it.
            self._proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise ClusterError(f"etcd at {self.endpoint} exited with status {code} during start\n{self.log_tail()}")
            if self._healthy():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ClusterError(f"etcd at {self.endpoint} not healthy after {timeout:g}s\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop etcd (SIGTERM, then SIGKILL); a no-op when it is not running."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return f"(no log at {self.log_path})"
        return "\n".join(text.splitlines()[-lines:])

    def _healthy(self) -> bool:
        # Another etcd already on the port would answer /health for us; only ours counts.
        if self._proc is None or not _listens(self._proc.pid, self.client_port):
            return False
        url = f"{self.endpoint}/health"
        if self.netns:
            probe = ["ip", "netns", "exec", self.netns, sys.executable, "-c", _PROBE, url]
            if self.tls:
                probe += self.tls.probe_args()
            return subprocess.run(probe, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        context = self.tls.ssl_context() if self.tls else None
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as response:
                return bool(json.load(response).get("health") == "true")
        except (OSError, urllib.error.URLError, ValueError):  # ssl.SSLError is an OSError
            return False

    def __enter__(self) -> EtcdProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
