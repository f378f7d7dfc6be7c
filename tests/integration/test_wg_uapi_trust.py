"""The daemon hands its private key only to an engine it can trust (finding 7 of issue 13).

An impostor that answers on the engine's UAPI socket path must get nothing: not when it runs
as another user (SO_PEERCRED), and no engine at all is talked to when the socket's directory
can be written by others. Root is needed to run the impostor as another user.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.backend.wireguard import UapiControl
from overlayd.wireguard.errors import UntrustedSocketError
from overlayd.wireguard.uapi import DeviceState, SetRequest
from overlayd.wireguard.uapi_server import UapiServer

pytestmark = pytest.mark.integration

NOBODY = 65534
KEY = bytes(range(1, 33))

# Binds the socket as root (as a squatter in a shared directory would be able to), drops to
# nobody before listen() so SO_PEERCRED names nobody, answers like an engine, reports the bytes
# it was sent.
IMPOSTOR = r"""
import os, socket, sys
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
listener.listen(4)
print("ready", flush=True)
listener.settimeout(10)
total = 0
for _ in range(2):  # the key exchange, and one get
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        break
    with conn:
        conn.settimeout(3)
        data = b""
        try:
            while chunk := conn.recv(65536):
                data += chunk
        except OSError:
            pass
        total += len(data)
        try:
            conn.sendall(b"errno=0\n\n")
        except OSError:
            pass
print(total, flush=True)
"""


class Answering:
    """A real UAPI server (in this root process) that records what it was asked to set."""

    def __init__(self) -> None:
        self.applied: list[SetRequest] = []

    def get_state(self) -> DeviceState:
        return DeviceState()

    def apply(self, request: SetRequest) -> None:
        self.applied.append(request)

    def counters(self) -> dict[str, int]:
        return {}


@pytest.fixture
def server_in(tmp_path: Path) -> Iterator[tuple[Path, Answering]]:
    """A genuine root-owned UAPI server for interface `wgt0` in tmp_path/wg."""
    directory = tmp_path / "wg"
    target = Answering()
    server = UapiServer(directory / "wgt0.sock", target)
    server.open()
    wake_r, wake_w = os.pipe()
    thread = threading.Thread(target=server.serve_until, args=(wake_r,))
    thread.start()
    try:
        yield directory, target
    finally:
        os.write(wake_w, b"x")
        thread.join(5)
        server.close()
        os.close(wake_r)
        os.close(wake_w)


def test_the_genuine_engine_gets_the_key(server_in: tuple[Path, Answering]) -> None:
    directory, target = server_in  # positive control for the refusals below
    UapiControl("wgt0", directory).configure(KEY, 51820)
    assert [r.private_key for r in target.applied] == [KEY]


def test_an_impostor_running_as_another_user_gets_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "wg"
    directory.mkdir(mode=0o755)
    impostor = subprocess.Popen([sys.executable, "-c", IMPOSTOR, str(directory / "wgt0.sock")],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert impostor.stdout is not None and impostor.stdout.readline().strip() == "ready"
        control = UapiControl("wgt0", directory)
        with pytest.raises(UntrustedSocketError, match=f"uid {NOBODY}"):
            control.configure(KEY, 51820)
        with pytest.raises(UntrustedSocketError):
            control.current()
        received = impostor.communicate(timeout=20)[0].strip()
    finally:
        if impostor.poll() is None:
            impostor.kill()
            impostor.wait()
    assert received == "0", f"the impostor read {received} bytes"


@pytest.mark.parametrize("change", ["world-writable", "group-writable", "owned-by-nobody"])
def test_a_socket_directory_others_can_write_is_refused(server_in: tuple[Path, Answering], change: str) -> None:
    directory, target = server_in
    if change == "owned-by-nobody":
        os.chown(directory, NOBODY, NOBODY)
    else:
        os.chmod(directory, 0o777 if change == "world-writable" else 0o775)
    with pytest.raises(UntrustedSocketError, match="directory"):
        UapiControl("wgt0", directory).configure(KEY, 51820)
    assert target.applied == []
