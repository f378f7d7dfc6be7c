"""overlayd-cni's C front (overlayd/cni/shim.c), built with the system's compiler, against a scripted daemon.

What it forwards (environment, stdin, the socket it was built for), what it
prints, and every case it hands to the Python client: here a stand-in script
that reports what it was given, so a test sees that the fallback ran and got
the very stdin and environment the runtime gave. No root needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.api import protocol
from overlayd.cni import build, client
from overlayd.errors import UsageError

pytestmark = pytest.mark.skipif(build.find_compiler() is None, reason="no C compiler")

# The stand-in for the Python client: prints what it got and exits 7.
FALLBACK = (f"import sys, os, json, hashlib; data = sys.stdin.buffer.read({client.MAX_CONFIG_BYTES + 1}); "
            "print(json.dumps({'fallback': True, 'stdin_len': len(data), 'stdin_sha': hashlib.sha256(data).hexdigest(), "
            "'env': {k: v for k, v in os.environ.items() if k.startswith('CNI_')}})); sys.exit(7)")
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/c1", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/opt/cni/bin"}
CONF = b'{"cniVersion": "1.0.0", "name": "overlayd", "type": "overlayd-cni"}'


class ScriptedDaemon:
    """A control socket that records each request line and answers with `reply` (raw bytes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reply = b""
        self.requests: list[bytes] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(8)
        threading.Thread(target=self._serve, args=(self._listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.path.unlink(missing_ok=True)

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data)
                conn.sendall(self.reply)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="shim-", dir="/tmp"))  # short: socket paths have 107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def shim(workdir: Path) -> Path:
    binary = workdir / "overlayd-cni"
    build.build_shim(binary, str(workdir / "d.sock"), python=sys.executable, code=FALLBACK)
    return binary


@pytest.fixture
def daemon(workdir: Path) -> Iterator[ScriptedDaemon]:
    d = ScriptedDaemon(workdir / "d.sock")
    d.start()
    yield d
    d.stop()


def _run(shim: Path, stdin: bytes | None = CONF, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(shim)], input=stdin, env={"PATH": os.environ["PATH"]} | (ENV if env is None else env),
                          capture_output=True, timeout=30, **kw)


def _ok(stdout: bytes, code: int = 0) -> bytes:
    """The reply the daemon gives the C front, made by the daemon's own encoder."""
    return protocol.encode_reply({"exit": code, "stdout_hex": stdout.hex()})


def _fell_back(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 7, proc
    report = json.loads(proc.stdout)
    assert report["fallback"] is True
    return report


def test_forwards_environment_stdin_and_socket_and_prints_the_answer(shim: Path, daemon: ScriptedDaemon) -> None:
    result = b'{"cniVersion": "1.0.0", "ips": []}\n'
    daemon.reply = _ok(result)
    proc = _run(shim, env=ENV | {"OTHER": "not forwarded"})
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, result, b"")
    (line,) = daemon.requests
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    request = json.loads(line)
    assert request == {"cmd": "cni.exec", "args": {"env": ENV, "stdin_hex": CONF.hex(),
                                                   "socket": str(daemon.path), "reply": "hex"}}
    protocol.decode_request_untrusted(line)  # and the daemon's parser takes it


def test_exit_code_and_empty_stdout_pass_through(shim: Path, daemon: ScriptedDaemon) -> None:
    error = b'{"cniVersion": "1.0.0", "code": 7, "msg": "bad"}\n'
    daemon.reply = _ok(error, 1)
    proc = _run(shim)
    assert (proc.returncode, proc.stdout) == (1, error)
    daemon.reply = _ok(b"")
    proc = _run(shim, env=ENV | {"CNI_COMMAND": "DEL"})
    assert (proc.returncode, proc.stdout) == (0, b"")


def test_every_byte_of_stdout_and_odd_environment_values_survive(shim: Path, daemon: ScriptedDaemon) -> None:
    everything = bytes(range(256)) * 40  # 10 KiB
    daemon.reply = _ok(everything)
    odd = 'K="a\\b";\t\x01\x1f\x7f end'
    proc = _run(shim, stdin=b"\x00\xff" + CONF, env=ENV | {"CNI_ARGS": odd})
    assert (proc.returncode, proc.stdout) == (0, everything)
    args = json.loads(daemon.requests[0])["args"]
    assert args["env"]["CNI_ARGS"] == odd and bytes.fromhex(args["stdin_hex"]) == b"\x00\xff" + CONF


def test_no_stdin_at_all_is_an_empty_config(shim: Path, daemon: ScriptedDaemon) -> None:
    daemon.reply = _ok(b"")
    proc = subprocess.run([str(shim)], env=ENV, capture_output=False, stdout=subprocess.PIPE, timeout=30,
                          stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(0))
    assert proc.returncode == 0
    assert json.loads(daemon.requests[0])["args"]["stdin_hex"] == ""


def test_version_goes_to_the_python_client_without_asking_the_daemon(shim: Path, daemon: ScriptedDaemon) -> None:
    report = _fell_back(_run(shim, env=ENV | {"CNI_COMMAND": "VERSION"}))
    assert report["stdin_len"] == len(CONF) and report["env"]["CNI_COMMAND"] == "VERSION"
    assert daemon.requests == []
    assert _fell_back(_run(shim, env={k: v for k, v in ENV.items() if k != "CNI_COMMAND"}))


def test_a_daemon_that_is_not_there_goes_to_the_python_client(shim: Path, workdir: Path) -> None:
    report = _fell_back(_run(shim))
    assert report["stdin_len"] == len(CONF) and report["env"] == ENV


@pytest.mark.parametrize("reply", [
    protocol.encode_reply({"fallback": True}),  # the config names another socket
    protocol.encode_error(UsageError("argument 'env' must map at most 16 CNI_* names to strings")),
    b'{"ok": true, "result": {"exit": 0, "stdout_hex": "7"}}\n',  # odd hex
    b'{"ok": true, "result": {"exit": 0, "stdout_hex": "zz"}}\n',
    b'{"ok": true, "result": {"exit": 0, "stdout_hex": "7B"}}\n',  # upper case is not what the daemon sends
    b'{"ok": true, "result": {"exit": 256, "stdout_hex": ""}}\n',
    b'{"ok": true, "result": {"exit": -1, "stdout_hex": ""}}\n',
    b'{"ok": true, "result": {"exit": 0, "stdout_hex": ""}}\nmore',
    b'{"ok": true, "result": {"exit": 0, "stdout_hex": ""}} \n',
    b'{"ok": true, "result": {"exit": 0, "stdout_hex": ""}}',  # no newline before the close
    b'{"ok": true, "result": {"exit": 0, "stdout": "{}"}}\n',  # the text reply
    b"",
    _ok(b"x" * 40_000),  # longer than the reply buffer
], ids=["fallback", "error", "odd-hex", "not-hex", "upper-hex", "exit-256", "exit-negative", "trailing",
        "space", "no-newline", "text-reply", "nothing", "too-long"])
def test_anything_but_the_exact_success_reply_goes_to_the_python_client(
        shim: Path, daemon: ScriptedDaemon, reply: bytes) -> None:
    daemon.reply = reply
    report = _fell_back(_run(shim))
    assert report["stdin_len"] == len(CONF) and report["env"] == ENV
    assert len(daemon.requests) == 1


@pytest.mark.parametrize("size", [32_767, 32_768, 40_000, client.MAX_CONFIG_BYTES + 1, 3 * (1 << 20)])
def test_a_config_too_large_for_one_request_reaches_the_python_client_whole(
        shim: Path, daemon: ScriptedDaemon, size: int) -> None:
    """No truncation: the client gets what it would have read itself (at most MAX_CONFIG_BYTES + 1)."""
    daemon.reply = _ok(b"")
    data = os.urandom(size // 2 + 1).hex().encode()[:size]
    report = _fell_back(_run(shim, stdin=data))
    expected = data[:client.MAX_CONFIG_BYTES + 1]
    assert report["stdin_len"] == len(expected)
    assert report["stdin_sha"] == hashlib.sha256(expected).hexdigest()
    assert daemon.requests == []


def test_a_request_too_large_from_the_environment_goes_to_the_python_client(
        shim: Path, daemon: ScriptedDaemon) -> None:
    report = _fell_back(_run(shim, env=ENV | {"CNI_ARGS": "x" * 70_000}))
    assert report["env"]["CNI_ARGS"] == "x" * 70_000 and daemon.requests == []


def test_non_ascii_environment_goes_to_the_python_client(shim: Path, daemon: ScriptedDaemon) -> None:
    report = _fell_back(_run(shim, env=ENV | {"CNI_ARGS": "K=é"}))
    assert report["env"]["CNI_ARGS"] == "K=é" and daemon.requests == []


def test_a_missing_python_client_is_still_a_spec_error(workdir: Path) -> None:
    binary = workdir / "broken"
    build.build_shim(binary, str(workdir / "none.sock"), python=str(workdir / "no-python"), code="pass")
    proc = _run(binary)
    error = json.loads(proc.stdout)
    assert proc.returncode == 1 and error["code"] == 5 and "cannot run the Python client" in error["msg"]
    assert error["cniVersion"] == "1.1.0"


def test_the_real_python_client_is_the_fallback_of_an_installed_plugin(workdir: Path) -> None:
    binary = workdir / "real"
    build.build_shim(binary, str(workdir / "none.sock"))  # this interpreter, this overlayd's client
    proc = _run(binary, env=ENV | {"CNI_COMMAND": "VERSION"})
    assert json.loads(proc.stdout) == {"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]}
    proc = _run(binary)  # no daemon there: the client's own error, code 11
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 11


def test_build_refuses_what_a_sockaddr_cannot_hold(workdir: Path) -> None:
    for bad in ("relative.sock", "/" + "x" * 107, "/a\0b"):
        with pytest.raises(build.BuildError):
            build.build_shim(workdir / "never", bad)
    assert not (workdir / "never").exists()


def test_build_reports_a_failing_compiler(workdir: Path) -> None:
    with pytest.raises(build.BuildError, match="failed"):
        build.build_shim(workdir / "never", "/run/x.sock", compiler="/bin/false")
    assert not (workdir / "never").exists()
    assert [p for p in workdir.iterdir() if p.name.startswith(".never")] == []


def test_strings_reach_the_binary_byte_for_byte(workdir: Path) -> None:
    """Paths with quotes, backslashes, spaces and non-ASCII are compiled in exactly."""
    odd = str(workdir / 'a "q" \\ é')
    os.makedirs(odd, exist_ok=True)
    python = Path(odd) / "py"
    python.symlink_to(sys.executable)
    binary = workdir / "odd"
    build.build_shim(binary, f"{odd}/d.sock", python=str(python), code=FALLBACK)
    daemon = ScriptedDaemon(Path(f"{odd}/d.sock"))
    daemon.start()
    try:
        daemon.reply = _ok(b"")
        assert _run(binary).returncode == 0
        assert json.loads(daemon.requests[0])["args"]["socket"] == f"{odd}/d.sock"
    finally:
        daemon.stop()
    assert _fell_back(_run(binary))  # and the fallback interpreter's path too


# --- the daemon's side of the C front's request -----------------------------------------

class _Plane:
    """The ControlPlane's cni_exec as the daemon has it (the real handler), over no kernel."""

    def __init__(self) -> None:
        self.deleted: list[tuple[str, ...]] = []

    async def status(self) -> dict:
        return {"ready": True, "subnet": "10.5.1.0/24"}

    async def cni_del(self, *key: str) -> None:
        self.deleted.append(key)

    async def cni_exec(self, env: dict[str, str], stdin: bytes, via: str | None = None) -> tuple[str, int] | None:
        from overlayd.cni.handler import handle

        return await handle(env, stdin, self, via=via)  # type: ignore[arg-type]


def _exec(plane: _Plane, conf: bytes, via: str | None, **extra: str) -> bytes:
    import trio

    from overlayd.api.commands import dispatch

    args = {"env": ENV | {"CNI_COMMAND": "DEL"}, "stdin_hex": conf.hex(), **extra}
    if via is not None:
        args["socket"] = via
    return protocol.encode_reply(trio.run(dispatch, plane, "cni.exec", args))


def test_the_daemon_answers_the_c_front_in_the_shape_it_reads(shim: Path, workdir: Path) -> None:
    """The daemon's own encoder, replayed to the binary: the success shape is exactly what shim.c parses."""
    conf = json.dumps({"cniVersion": "1.0.0", "name": "overlayd", "socket": "/run/o.sock"}).encode()
    plane = _Plane()
    reply = _exec(plane, conf, "/run/o.sock", reply="hex")
    assert reply == b'{"ok": true, "result": {"exit": 0, "stdout_hex": ""}}\n' and plane.deleted
    error = _exec(plane, b'{"cniVersion": "9.9.9", "name": "overlayd", "socket": "/run/o.sock"}', "/run/o.sock",
                  reply="hex")
    assert error.startswith(b'{"ok": true, "result": {"exit": 1, "stdout_hex": "7b')
    daemon = ScriptedDaemon(workdir / "d.sock")
    daemon.start()
    try:
        daemon.reply = error
        proc = _run(shim)
        assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 1
    finally:
        daemon.stop()


@pytest.mark.parametrize(("conf", "via"), [
    (b'{"cniVersion": "1.0.0", "name": "overlayd", "socket": "/run/other.sock"}', "/run/o.sock"),
    (b'{"cniVersion": "1.0.0", "name": "overlayd"}', "/run/o.sock"),  # the default socket is another
    (b'{"cniVersion": "1.0.0", "name": "overlayd", "socket": 5}', "/run/o.sock"),  # ditto, as the client reads it
    (b"[1, 2]", "/run/o.sock"),  # no JSON object: the client answers that itself
    (b'{"cniVersion": "1.0.0"', "/run/o.sock"),
])
def test_a_call_for_another_socket_is_handed_back_untouched(conf: bytes, via: str) -> None:
    plane = _Plane()
    assert _exec(plane, conf, via, reply="hex") == protocol.encode_reply({"fallback": True})
    assert plane.deleted == []


def test_without_a_socket_the_call_is_carried_out_as_before() -> None:
    plane = _Plane()
    conf = b'{"cniVersion": "1.0.0", "name": "overlayd", "socket": "/run/other.sock"}'
    assert json.loads(_exec(plane, conf, None)) == {"ok": True, "result": {"exit": 0, "stdout": ""}}
    assert plane.deleted == [("overlayd", "c1", "eth0")]
    assert client.target_socket(b"") == client.DEFAULT_SOCKET and client.target_socket(b"[]") is None


@pytest.mark.parametrize("extra", [{"reply": "json"}, {"socket": 5}, {"bogus": 1}])
def test_the_new_arguments_are_checked(extra: dict) -> None:
    import trio

    from overlayd.api.commands import dispatch

    args = {"env": ENV, "stdin_hex": CONF.hex()} | extra
    with pytest.raises(UsageError):
        trio.run(dispatch, _Plane(), "cni.exec", args)


# --- overlayctl cni install ----------------------------------------------------------------

def _install(tmp: Path, *args: str, cc: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ) | ({"CC": cc} if cc else {})
    return subprocess.run([sys.executable, "-m", "overlayd.cli.main", "--socket", str(tmp / "d.sock"), "--json",
                           "cni", "install", "--bin-dir", str(tmp / "bin"), "--conf-dir", str(tmp / "net.d"), *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_install_builds_the_c_front_for_the_socket_of_the_conflist(workdir: Path) -> None:
    tmp = workdir / "inst-c"
    proc = _install(tmp)
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and out["kind"] == "c" and out["note"] is None
    assert (tmp / "bin" / "overlayd-cni").read_bytes()[:4] == b"\x7fELF"
    conflist = json.loads((tmp / "net.d" / "10-overlayd.conflist").read_text())
    assert conflist["plugins"][0] == {"type": "overlayd-cni", "socket": str(tmp / "d.sock")}
    assert str(tmp / "d.sock").encode() in (tmp / "bin" / "overlayd-cni").read_bytes()


def test_install_without_a_compiler_puts_the_python_client_and_says_so(workdir: Path) -> None:
    tmp = workdir / "inst-py"
    proc = _install(tmp, cc="/nonexistent/cc")
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and out["kind"] == "python" and "no C compiler" in out["note"]
    assert (tmp / "bin" / "overlayd-cni").read_text().startswith("#!")
    proc = _install(workdir / "inst-c-only", "--plugin", "c", cc="/nonexistent/cc")
    assert proc.returncode == 2 and "no C compiler" in proc.stderr
    assert not (workdir / "inst-c-only" / "bin" / "overlayd-cni").exists()
    proc = _install(workdir / "inst-py-asked", "--plugin", "python")
    assert json.loads(proc.stdout)["kind"] == "python"
