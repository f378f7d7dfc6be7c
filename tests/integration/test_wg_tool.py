"""The stock `wg` tool against overlayd-wg's UAPI socket, side by side with wireguard-go.

Our engine and wireguard-go each run in a namespace of their own (no routes out); every `wg`
command is applied to both, and `wg showconf` / `wg show dump` must read back the same.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.wg_bed import new_key, run, start_engine, stop_engine, wait_for

pytestmark = pytest.mark.integration

SOCKET_DIR = Path("/var/run/wireguard")


@dataclass
class Iface:
    netns: str
    name: str
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Iface, Iface]]:
    prefix = f"t{secrets.token_hex(3)}"
    tmp = tmp_path_factory.mktemp("wgtool")
    made: list[Iface] = []
    try:
        for kind, suffix in (("ours", "o"), ("go", "g")):
            netns = f"{prefix}-{suffix}"
            run("ip", "netns", "add", netns)
            name = f"{prefix}w{suffix}"
            made.append(Iface(netns, name, start_engine(kind, netns, name, tmp / f"{name}.log")))
        yield made[0], made[1]
    finally:
        for iface in made:
            stop_engine(iface.proc)
        for suffix in "og":
            run("ip", "netns", "del", f"{prefix}-{suffix}", check=False)


def wg(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ("ip", "netns", "exec", netns, "wg", *args) if netns else ("wg", *args)
    return run(*cmd, check=check)


def secret_file(tmp_path: Path, name: str, content: str) -> str:
    path = tmp_path / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content + "\n")
    return str(path)


def normalized(text: str) -> list[str]:
    """showconf/dump output with peers in a fixed order (wireguard-go lists them in map order)."""
    blocks = [block.strip() for block in text.strip().split("\n[Peer]\n")]
    return [blocks[0], *sorted(blocks[1:])]


def both(pair: tuple[Iface, Iface], *args: str) -> None:
    for iface in pair:
        wg(*[iface.name if a == "IF" else a for a in args])


def assert_same(pair: tuple[Iface, Iface]) -> str:
    ours, go = pair
    conf = [normalized(wg("showconf", iface.name).stdout) for iface in pair]
    assert conf[0] == conf[1]
    dumps = []
    for iface in pair:
        lines = wg("show", iface.name, "dump").stdout.strip().split("\n")
        # Interface line; peers without the transfer counters (wireguard-go counts only the
        # bytes its socket accepted, we count what we emitted; nothing is reachable here).
        dumps.append([lines[0], *sorted("\t".join(line.split("\t")[:5] + line.split("\t")[7:]) for line in lines[1:])])
    assert dumps[0] == dumps[1]
    return wg("showconf", ours.name).stdout


def test_set_show_and_showconf_like_wireguard_go(pair: tuple[Iface, Iface], tmp_path: Path) -> None:
    private, public = new_key()
    (_, peer1), (_, peer2), (_, peer3) = new_key(), new_key(), new_key()
    psk = base64.b64encode(secrets.token_bytes(32)).decode()
    key_file, psk_file = secret_file(tmp_path, "key", private), secret_file(tmp_path, "psk", psk)

    both(pair, "set", "IF", "private-key", key_file, "listen-port", "51999", "fwmark", "0x1234",
         "peer", peer1, "preshared-key", psk_file, "endpoint", "198.18.5.1:51820", "persistent-keepalive", "25",
         "allowed-ips", "10.99.1.0/24,fd99:1::/64",
         "peer", peer2, "endpoint", "[2001:db8::5]:1234", "allowed-ips", "10.99.2.7/32")
    conf = assert_same(pair)
    assert f"PrivateKey = {private}" in conf and "ListenPort = 51999" in conf and "FwMark = 0x1234" in conf
    assert f"PublicKey = {peer1}\nPresharedKey = {psk}\nAllowedIPs = 10.99.1.0/24, fd99:1::/64\n" \
           f"Endpoint = 198.18.5.1:51820\nPersistentKeepalive = 25" in conf
    assert f"PublicKey = {peer2}\nAllowedIPs = 10.99.2.7/32\nEndpoint = [2001:db8::5]:1234" in conf
    show = wg("show", pair[0].name).stdout
    assert f"public key: {public}" in show and "listening port: 51999" in show and "fwmark: 0x1234" in show

    # Replace allowed IPs, move one to another peer, drop the PSK and the keepalive, remove a peer.
    both(pair, "set", "IF", "peer", peer1, "allowed-ips", "10.99.3.0/24,10.99.2.7/32", "preshared-key", "/dev/null",
         "persistent-keepalive", "off")
    both(pair, "set", "IF", "peer", peer3, "allowed-ips", "10.99.3.0/24")
    conf = assert_same(pair)
    assert f"PublicKey = {peer1}\nAllowedIPs = 10.99.2.7/32\nEndpoint = 198.18.5.1:51820\n" in conf
    assert f"PublicKey = {peer2}\nEndpoint = [2001:db8::5]:1234\n" in conf + "\n"
    both(pair, "set", "IF", "fwmark", "0", "peer", peer2, "remove")
    conf = assert_same(pair)
    assert peer2 not in conf and "FwMark" not in conf


def test_setconf_addconf_syncconf(pair: tuple[Iface, Iface], tmp_path: Path) -> None:
    private, _ = new_key()
    (_, peer1), (_, peer2) = new_key(), new_key()
    first = tmp_path / "first.conf"
    first.write_text(f"[Interface]\nPrivateKey = {private}\nListenPort = 52000\n\n"
                     f"[Peer]\nPublicKey = {peer1}\nAllowedIPs = 10.99.4.0/24\nEndpoint = 198.18.5.4:51820\n")
    both(pair, "setconf", "IF", str(first))
    conf = assert_same(pair)
    assert peer1 in conf and "ListenPort = 52000" in conf

    extra = tmp_path / "extra.conf"
    extra.write_text(f"[Peer]\nPublicKey = {peer2}\nAllowedIPs = 10.99.5.0/24\n")
    both(pair, "addconf", "IF", str(extra))
    conf = assert_same(pair)
    assert peer1 in conf and peer2 in conf

    both(pair, "syncconf", "IF", str(first))  # computes the difference from a get: peer2 goes
    conf = assert_same(pair)
    assert peer1 in conf and peer2 not in conf


def test_wg_finds_the_socket_from_root_and_from_the_namespace(pair: tuple[Iface, Iface]) -> None:
    ours = pair[0]
    assert ours.name in wg("show", "interfaces").stdout.split()
    from_ns = wg("show", ours.name, "public-key", netns=ours.netns).stdout
    assert from_ns == wg("show", ours.name, "public-key").stdout
    assert (SOCKET_DIR / f"{ours.name}.sock").is_socket()


def test_refused_requests_leave_the_interface_running(pair: tuple[Iface, Iface]) -> None:
    ours = pair[0]
    wg("set", ours.name, "listen-port", "52001")
    # Another socket holds the port we ask for: wg reports it, nothing changes.
    holder = subprocess.Popen(["ip", "netns", "exec", ours.netns, sys.executable, "-c",
                               "import socket,time; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
                               "s.bind(('::', 52002)); print('ok', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        result = wg("set", ours.name, "listen-port", "52002", check=False)
        assert result.returncode != 0 and "Address already in use" in result.stderr
    finally:
        holder.kill()
        holder.wait()
    assert wg("show", ours.name, "listen-port").stdout.strip() == "52001"
    # Garbage on the socket gets an errno, not a crash.
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(5)
        raw.connect(str(SOCKET_DIR / f"{ours.name}.sock"))
        raw.sendall(b"set=1\nlisten_port=banana\n\n")
        assert raw.recv(100) == b"errno=-22\n\n"
    assert wg("show", ours.name, "listen-port").stdout.strip() == "52001"
    assert ours.proc.poll() is None


def test_sigterm_removes_socket_and_interface(tmp_path: Path) -> None:
    prefix = f"t{secrets.token_hex(3)}"
    netns, other, name = f"{prefix}-s", f"{prefix}-t", f"{prefix}ws"
    run("ip", "netns", "add", netns)
    run("ip", "netns", "add", other)
    try:
        sock = SOCKET_DIR / f"{name}.sock"
        stale = socket.socket(socket.AF_UNIX)  # a stale socket left by a crashed process is replaced
        stale.bind(str(sock))
        stale.close()
        proc = start_engine("ours", netns, name, tmp_path / "log")
        try:
            run("ip", "-n", netns, "link", "show", name)
            # A second engine for the same name (in another namespace) must not steal the live socket.
            second = run("ip", "netns", "exec", other, sys.executable, "-m", "overlayd.wireguard.cli", name,
                         check=False)
            assert second.returncode == 1 and "in use" in second.stderr
            assert sock.is_socket()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
        finally:
            stop_engine(proc)
        assert not sock.exists()
        assert wait_for(lambda: run("ip", "-n", netns, "link", "show", name, check=False).returncode != 0, timeout=5)
    finally:
        run("ip", "netns", "del", netns, check=False)
        run("ip", "netns", "del", other, check=False)
