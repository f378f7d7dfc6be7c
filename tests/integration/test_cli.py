"""overlayctl, overlayd and overlayd-wg as an operator meets them: the installed console scripts
(next to this Python), a real ControlServer on a temp socket answering as a daemon would, a
real etcd, real pod namespaces for `pod exec`, and an unprivileged user (nobody) for the
"run as root" refusals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from overlayd.api.server import ControlServer
from overlayd.lab.etcd_process import EtcdProcess
from tests.integration.test_control_socket import StubPlane, socket_dir  # noqa: F401  (fixture)
from tests.integration.test_hardening_exec import PodPlane, pod_pid  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
OVERLAYCTL = str(BIN / "overlayctl")
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

STATUS = {"node": "h1", "ready": True, "health": "ok", "problems": [], "last_error": None, "etcd": "ok",
          "subnet": "10.244.1.0/24", "lease": "held", "peers": 2, "pods": 1,
          "trust": {"signing": None, "verifying": None, "rejected": {}}}
DEGRADED = STATUS | {"health": "degraded", "problems": ["lease: etcd unreachable (for 3.0s, 2 failures)"]}
POD = {"name": "web", "ip": "10.244.1.2", "node": "h1", "labels": {"app": "web"}, "netns": "ovl-web",
       "created": "2024-01-01T00:00:00Z"}


class Plane(StubPlane):
    def __init__(self, status: dict[str, Any] = STATUS) -> None:
        super().__init__()
        self._status = status

    async def status(self) -> dict[str, Any]:
        return self._status

    async def pod_list(self) -> list[dict[str, Any]]:
        return [POD]


@contextmanager
def serving(path: Path, plane: Any) -> Iterator[Path]:
    """A ControlServer on `path` in a thread of its own for the with-block."""
    started, stop = threading.Event(), threading.Event()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(ControlServer(path, plane).serve)
            started.set()
            while not stop.is_set():
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(main,))
    thread.start()
    try:
        assert started.wait(10), "control server did not start"
        yield path
    finally:
        stop.set()
        thread.join(10)


def run(*args: str, env: dict[str, str] | None = None, as_nobody: bool = False,
        cwd: Path | str = "/") -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OVERLAYCTL_", "ETCDCTL_"))}
    base["OVERLAYCTL_CONFIG"] = os.devnull  # never the machine's own client config
    cmd = [*AS_NOBODY, *args] if as_nobody else list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=cwd, env=base | (env or {}))


def ctl(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return run(OVERLAYCTL, *args, **kwargs)


def one_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(f in lines[0] for f in fragments), lines[0]
    return lines[0]


@pytest.fixture
def sock(socket_dir: Path) -> Iterator[Path]:  # noqa: F811
    with serving(socket_dir / "overlayd.sock", Plane()) as path:
        yield path


# --- global flags anywhere ----------------------------------------------------

def test_global_flags_are_accepted_before_and_after_the_subcommand(sock: Path) -> None:
    for args in (["pod", "ls", "--socket", str(sock)], ["--socket", str(sock), "pod", "ls"],
                 ["pod", "--socket", str(sock), "ls"]):
        result = ctl(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stdout.split()[:2] == ["NAME", "IP"]
    for args in (["status", "--json", "--socket", str(sock)], ["--json", "status", "--socket", str(sock)],
                 ["-o", "json", "status", "--socket", str(sock)], ["status", "--socket", str(sock), "-o", "json"]):
        result = ctl(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert json.loads(result.stdout) == STATUS


def test_lab_up_takes_json_after_the_subcommand() -> None:
    # As nobody, so the parse is all that happens: the refusal is about root, not the flag.
    result = ctl("lab", "up", "--json", "--dir", "/tmp/ovl-cli-never", as_nobody=True)
    assert "unrecognized arguments" not in result.stderr
    one_line(result, "needs root")


# --- --version ----------------------------------------------------------------

def test_every_command_prints_its_version() -> None:
    from importlib.metadata import version

    for prog in ("overlayctl", "overlayd", "overlayd-wg"):
        result = run(str(BIN / prog), "--version")
        assert (result.returncode, result.stdout.strip()) == (0, f"{prog} {version('overlayd')}"), result.stderr


# --- settings from the environment and a config file --------------------------

def test_socket_comes_from_flag_then_environment_then_config_file(socket_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    config = tmp_path / "config.toml"
    with serving(socket_dir / "a.sock", Plane()) as a, serving(socket_dir / "b.sock", Plane(DEGRADED)) as b:
        config.write_text(f'socket = "{a}"\n')
        from_file = ctl("status", "-o", "json", env={"OVERLAYCTL_CONFIG": str(config)})
        assert json.loads(from_file.stdout)["health"] == "ok", from_file.stderr
        from_env = ctl("status", "-o", "json", env={"OVERLAYCTL_CONFIG": str(config), "OVERLAYCTL_SOCKET": str(b)})
        assert json.loads(from_env.stdout)["health"] == "degraded", from_env.stderr
        from_flag = ctl("status", "-o", "json", "--socket", str(a),
                        env={"OVERLAYCTL_CONFIG": str(config), "OVERLAYCTL_SOCKET": str(b)})
        assert json.loads(from_flag.stdout)["health"] == "ok", from_flag.stderr


def test_the_default_config_file_is_under_xdg_config_home(sock: Path, tmp_path: Path) -> None:
    (tmp_path / "overlayctl").mkdir()
    (tmp_path / "overlayctl" / "config.toml").write_text(f'socket = "{sock}"\n')
    env = {"XDG_CONFIG_HOME": str(tmp_path), "OVERLAYCTL_CONFIG": ""}
    result = ctl("status", "--check", env=env)
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr


def test_etcd_endpoints_and_tls_files_come_from_etcdctl_variables(etcd_server: EtcdProcess, etcd_prefix: str,
                                                                  tmp_path: Path) -> None:
    bare = etcd_server.endpoint.removeprefix("http://")  # etcdctl's host:port form
    env = {"ETCDCTL_ENDPOINTS": bare, "OVERLAYCTL_ETCD_PREFIX": etcd_prefix}
    init = ctl("network", "init", "--cidr", "10.213.0.0/16", env=env)
    assert init.returncode == 0, init.stderr
    shown = ctl("network", "show", "--json", env=env)
    assert json.loads(shown.stdout)["network"] == "10.213.0.0/16", shown.stderr
    # A TLS file from the environment is used: with a plain-http endpoint it is refused by name.
    tls = ctl("network", "show", env={**env, "ETCDCTL_CACERT": str(tmp_path / "ca.pem"),
                                      "ETCDCTL_ENDPOINTS": etcd_server.endpoint})
    assert tls.returncode != 0
    one_line(tls, "TLS files are set but the endpoint is plain http")
    # And from the config file, with the flag still winning over it.
    config = tmp_path / "config.toml"
    config.write_text(f'[etcd]\nendpoints = ["http://127.0.0.1:9"]\nprefix = "{etcd_prefix}"\n')
    flagged = ctl("network", "show", "--json", "--etcd-endpoints", etcd_server.endpoint,
                  env={"OVERLAYCTL_CONFIG": str(config)})
    assert json.loads(flagged.stdout)["network"] == "10.213.0.0/16", flagged.stderr
    unflagged = ctl("network", "show", env={"OVERLAYCTL_CONFIG": str(config)})
    assert unflagged.returncode == 1
    one_line(unflagged, "127.0.0.1:9")


@pytest.mark.parametrize("content, fragment", [
    ("socket = [", "not valid TOML"),
    ("sockett = '/x'", "unknown key 'sockett'"),
    ("[etcd]\nendpoint = 'http://x:1'", "unknown key etcd.endpoint"),
    ("socket = 5", "socket: expected a non-empty string"),
])
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, content: str, fragment: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(content)
    result = ctl("status", env={"OVERLAYCTL_CONFIG": str(config)})
    assert result.returncode == 2
    one_line(result, str(config), fragment)


def test_a_named_config_file_that_is_missing_is_exit_2(tmp_path: Path) -> None:
    result = ctl("status", env={"OVERLAYCTL_CONFIG": str(tmp_path / "nope.toml")})
    assert result.returncode == 2
    one_line(result, "nope.toml", "does not exist")


# --- exit codes -----------------------------------------------------------------

def test_status_exits_1_when_degraded_and_check_prints_one_line(socket_dir: Path) -> None:  # noqa: F811
    with serving(socket_dir / "ok.sock", Plane()) as ok, serving(socket_dir / "bad.sock", Plane(DEGRADED)) as bad, \
            serving(socket_dir / "start.sock", Plane(STATUS | {"ready": False, "health": "starting"})) as starting:
        assert ctl("status", "--socket", str(ok)).returncode == 0
        degraded = ctl("status", "--socket", str(bad))
        assert degraded.returncode == 1 and "degraded" in degraded.stdout
        assert ctl("status", "--json", "--socket", str(bad)).returncode == 1
        checks = {name: ctl("status", "--check", "--socket", str(path))
                  for name, path in (("ok", ok), ("degraded", bad), ("starting", starting))}
        assert [(r.returncode, r.stdout.strip()) for r in checks.values()] == [
            (0, "ok"), (1, "degraded: lease: etcd unreachable (for 3.0s, 2 failures)"), (1, "starting")]
    gone = ctl("status", "--check", "--socket", str(socket_dir / "ok.sock"))
    assert gone.returncode == 1 and gone.stdout.startswith("unreachable: ")


def test_usage_errors_exit_2_and_failures_exit_1(sock: Path) -> None:
    assert ctl("pod", "frobnicate").returncode == 2
    bad_name = ctl("pod", "get", "Not_A_Name", "--socket", str(sock))
    assert bad_name.returncode == 2
    missing = ctl("pod", "get", "nope", "--socket", str(sock))
    assert missing.returncode == 1
    one_line(missing, "no pod nope")


def test_pod_exec_passes_126_and_127_through_the_console_script(socket_dir: Path, pod_pid: int) -> None:  # noqa: F811
    with serving(socket_dir / "overlayd.sock", PodPlane(pod_pid)) as path:
        ok = ctl("pod", "exec", "pod1", "--socket", str(path), "--", "hostname")
        not_executable = ctl("--socket", str(path), "pod", "exec", "pod1", "--", "/etc/passwd")
        missing = ctl("--socket", str(path), "pod", "exec", "pod1", "--", "ovl-no-such-command", "--json")
    assert (ok.returncode, ok.stdout.strip()) == (0, "ovl-exec-pod"), ok.stderr
    assert not_executable.returncode == 126
    one_line(not_executable, "cannot execute")
    assert missing.returncode == 127  # "--json" after -- belongs to the command, not to overlayctl
    one_line(missing, "ovl-no-such-command", "not found")


# --- output ---------------------------------------------------------------------

def test_text_output_shows_no_python_values(sock: Path) -> None:
    result = ctl("status", "--socket", str(sock))
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert fields["ready"] == "yes"
    assert fields["last_error"] == "-"
    assert fields["trust.signing"] == "-" and fields["trust.rejected"] == "-"
    for python_value in ("True", "False", "None", "{}", "[]"):
        assert python_value not in result.stdout.split(), result.stdout


def test_wide_output_and_no_headers(sock: Path) -> None:
    table = ctl("pod", "ls", "--socket", str(sock)).stdout.splitlines()
    assert table[0].split() == ["NAME", "IP", "HOST", "LABELS"]
    assert table[1].split() == ["web", "10.244.1.2", "h1", "app=web"]
    wide = ctl("pod", "ls", "-o", "wide", "--socket", str(sock)).stdout.splitlines()
    assert wide[0].split() == ["NAME", "IP", "HOST", "LABELS", "NETNS", "CREATED"]
    bare = ctl("pod", "ls", "--no-headers", "--socket", str(sock)).stdout.splitlines()
    assert bare == table[1:]


def test_network_show_honours_json(etcd_server: EtcdProcess, etcd_prefix: str) -> None:
    flags = ["--etcd-endpoints", etcd_server.endpoint, "--etcd-prefix", etcd_prefix]
    assert ctl("network", "init", "--cidr", "10.214.0.0/16", *flags).returncode == 0
    text = ctl("network", "show", *flags)
    assert text.returncode == 0, text.stderr
    fields = dict(line.split(None, 1) for line in text.stdout.splitlines())
    assert fields["network"] == "10.214.0.0/16" and fields["backend.type"] == "vxlan"
    as_json = json.loads(ctl("network", "show", "--json", *flags).stdout)
    assert as_json["network"] == "10.214.0.0/16" and as_json["backend"]["type"] == "vxlan"


# --- completion -----------------------------------------------------------------

def _bash_complete(script: Path, line: list[str]) -> list[str]:
    words = " ".join(f"'{w}'" for w in line)
    result = run("bash", "-c", f'source {script}; COMP_WORDS=({words}); COMP_CWORD={len(line) - 1}; '
                 '_overlayctl; printf "%s\\n" "${COMPREPLY[@]}"')
    assert result.returncode == 0, result.stderr
    return sorted(w for w in result.stdout.splitlines() if w)


def test_bash_completion_from_the_generated_script(tmp_path: Path) -> None:
    script = tmp_path / "overlayctl.bash"
    result = ctl("completion", "bash")
    assert result.returncode == 0, result.stderr
    script.write_text(result.stdout)
    assert _bash_complete(script, ["overlayctl", ""]) == sorted(
        ["status", "hosts", "peers", "pod", "service", "policy", "network", "lab", "ca", "cni", "completion"])
    assert _bash_complete(script, ["overlayctl", "service", ""]) == ["add", "del", "get", "ls"]
    assert _bash_complete(script, ["overlayctl", "policy", ""]) == ["apply", "del", "explain", "get", "ls"]
    assert _bash_complete(script, ["overlayctl", "pod", ""]) == ["add", "del", "exec", "get", "ls"]
    assert _bash_complete(script, ["overlayctl", "--socket", "/x", "pod", "a"]) == ["add"]
    assert _bash_complete(script, ["overlayctl", "lab", "up", "--backend", ""]) == ["host-gw", "vxlan", "wireguard"]
    assert _bash_complete(script, ["overlayctl", "pod", "ls", "-o", "w"]) == ["wide"]
    assert "--no-headers" in _bash_complete(script, ["overlayctl", "pod", "ls", "--no"])
    assert "--label" in _bash_complete(script, ["overlayctl", "pod", "add", "--"])
    assert _bash_complete(script, ["overlayctl", "pod", "exec", "p", "--", ""]) == []


def test_zsh_completion_from_the_generated_script(tmp_path: Path) -> None:
    """zsh's completion builtins only work inside a completion widget; stand-ins that print
    what they were given check the script's own logic (which words it offers, with help)."""
    script = tmp_path / "_overlayctl.zsh"
    script.write_text(ctl("completion", "zsh").stdout)
    stubs = ('compdef() { :; }; compadd() { [[ $1 == -- ]] && shift; print -l -- "$@"; }; '
             '_files() { print FILES; }; _describe() { print -l -- "${(@P)4}"; }')

    def complete(*line: str) -> list[str]:
        words = " ".join(f"'{w}'" for w in line)
        result = run("zsh", "-f", "-c", f"{stubs}; source {script}; words=({words}); CURRENT={len(line)}; _overlayctl")
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    pods = complete("overlayctl", "pod", "")
    assert [w.split(":")[0] for w in pods] == ["add", "del", "ls", "get", "exec"]
    assert "add:create a pod: namespaces, veth, address, route" in pods
    assert complete("overlayctl", "network", "init", "--backend", "") == ["vxlan", "wireguard", "host-gw"]
    assert complete("overlayctl", "pod", "ls", "--socket", "") == ["FILES"]
    assert "--no-headers:print tables without their header line" in complete("overlayctl", "status", "--")


# --- without root -----------------------------------------------------------------

def test_without_root_commands_say_run_as_root_and_leave_nothing(tmp_path: Path, sock: Path) -> None:
    base = Path("/tmp") / f"ovl-cli-nobody-{os.getpid()}"
    for command in (["lab", "up", "--dir", str(base / "labs")], ["lab", "status", "--dir", str(base)],
                    ["lab", "down", "--dir", str(base)], ["pod", "exec", "web", "--", "true"]):
        result = ctl(*command, as_nobody=True, cwd="/tmp")
        assert result.returncode == 1, (command, result.stderr)
        one_line(result, "needs root", "run as root")
    assert not base.exists()
    # The daemon's socket (root's, mode 0755 here for the directory only) refuses nobody: the same hint.
    sock.chmod(0o600)
    refused = ctl("status", "--socket", str(sock), as_nobody=True, cwd="/tmp")
    assert refused.returncode == 1
    one_line(refused, "run as root")


def test_a_failed_lab_up_as_root_is_one_line_and_removes_the_base_dir_it_made(tmp_path: Path) -> None:
    base = tmp_path / "made" / "by" / "lab"
    # Without /usr/bin on PATH the lab's first `sh` fails, after the lab dir was made.
    result = ctl("lab", "up", "--name", "ovclix", "--hosts", "1", "--dir", str(base), env={"PATH": "/usr/sbin:/sbin"})
    assert result.returncode == 1
    assert "lab up failed" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "made").exists()
    assert "ovclix" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
