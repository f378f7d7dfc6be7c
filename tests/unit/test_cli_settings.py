"""overlayctl's settings: flag > environment > config file > default, and file checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from overlayd.cli.settings import config_path, isolated_env, load_config_file, normalize_endpoints, resolve
from overlayd.errors import UsageError


def test_precedence_flag_then_env_then_file_then_default() -> None:
    file_values = {"socket": "/file.sock", "etcd_prefix": "/file"}
    env = {"OVERLAYCTL_SOCKET": "/env.sock", "ETCDCTL_CACERT": "/env-ca.pem"}
    values = resolve({"socket": Path("/flag.sock"), "etcd_ca": None}, env, file_values)
    assert values["socket"] == Path("/flag.sock")
    assert values["etcd_ca"] == Path("/env-ca.pem")
    assert values["etcd_prefix"] == "/file"
    assert values["etcd_cert"] is None
    assert values["etcd_endpoints"] == "https://127.0.0.1:2379"  # default, TLS because a CA is set
    assert resolve({}, {}, {})["socket"] == Path("/run/overlayd/overlayd.sock")


def test_etcdctl_style_bare_endpoints_get_a_scheme() -> None:
    assert normalize_endpoints("10.0.0.1:2379, http://b:1,", tls=False) == "http://10.0.0.1:2379,http://b:1"
    assert normalize_endpoints("10.0.0.1:2379", tls=True) == "https://10.0.0.1:2379"


def test_config_file_values_and_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('socket = "run/x.sock"\n[etcd]\nendpoints = ["https://a:1", "https://b:2"]\nca_file = "ca.pem"\n')
    assert load_config_file(path, required=True) == {
        "socket": str(tmp_path / "run/x.sock"), "etcd_endpoints": "https://a:1,https://b:2",
        "etcd_ca": str(tmp_path / "ca.pem")}


@pytest.mark.parametrize("content, fragment", [
    ("x = [", "not valid TOML"),
    ("[etc]\nprefix = '/p'", "unknown table [etc]"),
    ("[etcd]\nendpoints = []", "etcd.endpoints: expected a list of URLs"),
    ("[etcd]\nprefix = ''", "etcd.prefix: expected a non-empty string"),
])
def test_bad_config_files_are_usage_errors(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(content)
    with pytest.raises(UsageError, match=fragment.replace("[", r"\[")):
        load_config_file(path, required=False)


def test_only_a_named_config_file_must_exist(tmp_path: Path) -> None:
    assert load_config_file(tmp_path / "absent.toml", required=False) == {}
    with pytest.raises(UsageError, match="does not exist"):
        load_config_file(tmp_path / "absent.toml", required=True)
    assert config_path({"HOME": "/home/op"}) == (Path("/home/op/.config/overlayctl/config.toml"), False)
    assert config_path({"XDG_CONFIG_HOME": "/x", "OVERLAYCTL_CONFIG": "/c.toml"}) == (Path("/c.toml"), True)


def test_isolated_env_drops_the_callers_settings() -> None:
    env = isolated_env({"PATH": "/bin", "ETCDCTL_CACERT": "/ca", "OVERLAYCTL_SOCKET": "/s", "OVERLAYCTL_CONFIG": "/c"})
    assert env == {"PATH": "/bin", "OVERLAYCTL_CONFIG": "/dev/null"}
