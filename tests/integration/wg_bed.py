"""A two-namespace tunnel test bed: ns A (198.18.1.1) and ns B (198.18.1.2) joined by a veth,
each running a userspace WireGuard interface (kind "ours", `overlayd-wg`, or "go", Debian's
wireguard-go) configured with the stock `wg` tool, or (kind "vxlan" on both sides) a kernel
VXLAN device as the unencrypted reference, or (kind "relay" on both sides) python_relay.py,
the least a Python tunnel does per packet (a yardstick for benchmarks, not a VPN). Tunnel addresses 10.99.0.1/.2 and fd99::1/::2 live
inside the namespaces only; the tunnel MTU is 1420 for every kind. Used by the integration
tests and by benchmarks/bench_wireguard.py.

Every name carries a random per-bed prefix; `close()` (or leaving the `with` block) stops the
processes and deletes the namespaces even after a failure.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from overlayd.wireguard import crypto
from overlayd.wireguard.uapi_server import UapiClient, socket_path

REPO = Path(__file__).resolve().parents[2]
PORT = 51820


def run(*cmd: str, check: bool = True, timeout: float = 30,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def new_key() -> tuple[str, str]:
    """(private, public) in wg's base64."""
    private = crypto.generate_private_key(os.urandom)
    public = crypto.public_key(crypto.private_key_object(private))
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


def start_engine(kind: str, netns: str, ifname: str, log: Path, *, offload: bool = True,
                 ours_args: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """Start `overlayd-wg` ("ours", with `ours_args`) or wireguard-go ("go") inside `netns` and
    wait for its UAPI socket."""
    if kind == "ours":
        cmd = [sys.executable, "-m", "overlayd.wireguard.cli", *(() if offload else ("--no-offload",)), *ours_args,
               ifname]
    else:
        cmd = ["wireguard-go", "-f", ifname]
    with open(log, "ab") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, *cmd], stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        UapiClient(ifname).wait_ready(timeout=15)
    except Exception:
        stop_engine(proc)
        raise RuntimeError(f"{kind} engine for {ifname} did not come up: {log.read_text(errors='replace')[-2000:]}")
    return proc


def start_relay(netns: str, ifname: str, local: str, remote: str, log: Path) -> subprocess.Popen[bytes]:
    """Start python_relay.py inside `netns` and wait until its TUN device exists."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "tests.integration.python_relay",
                                 ifname, local, remote, str(PORT)], stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    if not wait_for(lambda: run("ip", "-n", netns, "link", "show", ifname, check=False).returncode == 0, timeout=15):
        stop_engine(proc)
        raise RuntimeError(f"relay {ifname} did not come up: {log.read_text(errors='replace')[-2000:]}")
    return proc


def stop_engine(proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout)


@dataclass
class Side:
    netns: str
    ifname: str
    underlay_ip: str
    tunnel_ip: str
    tunnel_ip6: str
    private: str
    public: str
    kind: str = ""
    proc: subprocess.Popen[bytes] | None = None


class WgBed:
    def __init__(self, kind_a: str = "ours", kind_b: str = "go", *, offload: bool = True,
                 prefix: str | None = None, ours_args: Sequence[str] = ()) -> None:
        """`ours_args`: extra overlayd-wg options (e.g. --workers 2) for sides of kind "ours"."""
        self.prefix = prefix or f"t{secrets.token_hex(3)}"
        self.offload = offload
        self.ours_args = tuple(ours_args)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        p = self.prefix
        self.a = Side(f"{p}-a", f"{p}wa", "198.18.1.1", "10.99.0.1", "fd99::1", *new_key(), kind=kind_a)
        self.b = Side(f"{p}-b", f"{p}wb", "198.18.1.2", "10.99.0.2", "fd99::2", *new_key(), kind=kind_b)
        self._namespaces: list[str] = []

    def __enter__(self) -> WgBed:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        a, b = self.a, self.b
        for side in (a, b):
            run("ip", "netns", "add", side.netns)
            self._namespaces.append(side.netns)
            self.sh(side, "ip", "link", "set", "lo", "up")
        run("ip", "link", "add", f"{self.prefix}va", "netns", a.netns, "type", "veth",
            "peer", "name", f"{self.prefix}vb", "netns", b.netns)
        for side, veth in ((a, f"{self.prefix}va"), (b, f"{self.prefix}vb")):
            self.sh(side, "ip", "addr", "add", f"{side.underlay_ip}/24", "dev", veth)
            self.sh(side, "ip", "link", "set", veth, "up")
            peer = b if side is a else a
            if side.kind == "vxlan":
                self.sh(side, "ip", "link", "add", side.ifname, "mtu", "1420", "type", "vxlan", "id", "42",
                        "local", side.underlay_ip, "remote", peer.underlay_ip, "dstport", "4789", "dev", veth)
            elif side.kind == "relay":
                side.proc = start_relay(side.netns, side.ifname, side.underlay_ip, peer.underlay_ip,
                                        self.tmp / f"{side.ifname}.log")
                self.sh(side, "ip", "link", "set", side.ifname, "mtu", "1420")
            else:
                side.proc = start_engine(side.kind, side.netns, side.ifname, self.tmp / f"{side.ifname}.log",
                                         offload=self.offload, ours_args=self.ours_args)
            self.sh(side, "ip", "addr", "add", f"{side.tunnel_ip}/24", "dev", side.ifname)
            self.sh(side, "ip", "-6", "addr", "add", f"{side.tunnel_ip6}/64", "dev", side.ifname, "nodad")
            self.sh(side, "ip", "link", "set", side.ifname, "up")
        for side, peer in ((a, b), (b, a)):
            if side.kind in ("ours", "go"):
                self.configure(side, peer)

    def key_file(self, side: Side) -> Path:
        path = self.tmp / f"{side.ifname}.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(side.private + "\n")
        return path

    def configure(self, side: Side, peer: Side, *extra: str) -> None:
        """Identity, port and the other side as the only peer, with `wg set`."""
        self.wg("set", side.ifname, "private-key", str(self.key_file(side)), "listen-port", str(PORT),
                "peer", peer.public, "endpoint", f"{peer.underlay_ip}:{PORT}",
                "allowed-ips", f"{peer.tunnel_ip}/32,{peer.tunnel_ip6}/128", *extra)

    def readd_peer(self, side: Side, peer: Side) -> None:
        """Drop the peer (and with it every session) and configure it again: the next packet
        needs a new handshake, which is how the tests force a rekey."""
        self.wg("set", side.ifname, "peer", peer.public, "remove")
        self.configure(side, peer)

    def wg(self, *args: str, netns: str | None = None) -> str:
        cmd = ("ip", "netns", "exec", netns, "wg", *args) if netns else ("wg", *args)
        return run(*cmd).stdout

    def sh(self, side: Side, *cmd: str, check: bool = True, timeout: float = 30,
           cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", side.netns, *cmd, check=check, timeout=timeout, cwd=cwd)

    def ping(self, side: Side, address: str, count: int = 3) -> None:
        self.sh(side, "ping", "-c", str(count), "-i", "0.2", "-W", "3", address)

    def iperf(self, client: Side, server: Side, *, v6: bool = False, reverse: bool = False,
              seconds: float | None = None, nbytes: int | None = None, streams: int = 1,
              timeout: float = 60) -> dict:
        """One iperf3 TCP run (`streams` parallel connections) from `client` to `server`'s tunnel
        address; iperf3's JSON result."""
        address = server.tunnel_ip6 if v6 else server.tunnel_ip
        listener = subprocess.Popen(["ip", "netns", "exec", server.netns, "iperf3", "-s", "-1", "-B", address],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            listening = lambda: ":5201" in self.sh(server, "ss", "-Hltn", check=False).stdout  # noqa: E731
            if not wait_for(listening, timeout=10):
                raise RuntimeError("iperf3 server did not start")
            amount = ["-n", str(nbytes)] if nbytes is not None else ["-t", str(seconds or 3)]
            result = self.sh(client, "iperf3", "-c", address, "-J", "--connect-timeout", "5000", *amount,
                             "-P", str(streams),
                             *(["-R"] if reverse else []), check=False, timeout=timeout)
            report = json.loads(result.stdout) if result.stdout.strip() else {"error": result.stderr}
            if "error" in report:
                raise RuntimeError(f"iperf3 {client.netns} -> {address}: {report['error']}")
            return report
        finally:
            if listener.poll() is None:
                listener.kill()
            listener.wait(5)

    def tcp_transfer(self, sender: Side, receiver: Side, nbytes: int, *, v6: bool = False, timeout: float = 60) -> None:
        """Send `nbytes` of pseudo-random data over one TCP connection through the tunnel and
        check that exactly those bytes arrived (sha256 on both ends)."""
        address = receiver.tunnel_ip6 if v6 else receiver.tunnel_ip
        port = str(20000 + secrets.randbelow(10000))
        server = subprocess.Popen(
            ["ip", "netns", "exec", receiver.netns, sys.executable, "-m", "tests.integration.wg_bed",
             "receive", address, port],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            sent = self.sh(sender, sys.executable, "-m", "tests.integration.wg_bed", "send", address, port, str(nbytes),
                           timeout=timeout, cwd=REPO).stdout.strip()
            received, errors = server.communicate(timeout=timeout)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(5)
        assert received.strip() == sent, f"sent {sent}, received {received.strip()} {errors}"

    def logs(self) -> str:
        logs = sorted(self.tmp.glob("*.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)

    def latest_handshake(self, side: Side, peer: Side) -> int:
        for line in self.wg("show", side.ifname, "latest-handshakes").splitlines():
            key, _, value = line.partition("\t")
            if key == peer.public:
                return int(value)
        raise AssertionError(f"{peer.public} is not a peer of {side.ifname}")

    def close(self) -> None:
        for side in (self.a, self.b):
            if side.proc is not None:
                stop_engine(side.proc)
        for ns in self._namespaces:
            for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)  # what a failed test left running in our namespace
                except ProcessLookupError:
                    pass
            run("ip", "netns", "del", ns, check=False)
        self._namespaces.clear()
        for side in (self.a, self.b):  # a killed engine leaves its socket file behind
            socket_path(side.ifname).unlink(missing_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def wait_for(predicate: Callable[[], object], timeout: float = 10, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _receive(address: str, port: int) -> None:
    """Accept one connection, read to EOF, print `<bytes> <sha256>`."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(1)
        listener.settimeout(30)
        conn, _ = listener.accept()
        digest, total = hashlib.sha256(), 0
        with conn:
            conn.settimeout(30)
            while chunk := conn.recv(1 << 16):
                digest.update(chunk)
                total += len(chunk)
    print(total, digest.hexdigest())


def _send(address: str, port: int, nbytes: int) -> None:
    """Connect (retrying while the receiver starts), send pseudo-random bytes, print `<bytes> <sha256>`."""
    data = random.Random(nbytes).randbytes(nbytes)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    deadline = time.monotonic() + 10
    while True:
        conn = socket.socket(family, socket.SOCK_STREAM)
        try:
            conn.settimeout(30)
            conn.connect((address, port))
            break
        except OSError:
            conn.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # the receiver closes after reading everything
    print(nbytes, hashlib.sha256(data).hexdigest())


if __name__ == "__main__":
    if sys.argv[1] == "receive":
        _receive(sys.argv[2], int(sys.argv[3]))
    else:
        _send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
