"""Config values of the wrong type or out of range: one ConfigError naming the key, never a traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from overlayd.config import add_daemon_arguments, config_from_args, config_from_mapping
from overlayd.errors import ConfigError


def _parse(argv: list[str]):
    parser = argparse.ArgumentParser()
    add_daemon_arguments(parser)
    return config_from_args(parser.parse_args(argv))


@pytest.mark.parametrize("values, fragment", [
    ({"etcd": 5}, "[etcd] must be a table"),
    ({"etcd": "http://x:1"}, "[etcd] must be a table"),
    ({"wireguard": [1]}, "[wireguard] must be a table"),
    ({"socket_group": -5}, "socket_group"),
    ({"socket_group": 2**32}, "socket_group"),
    ({"socket_group": 1.5}, "socket_group"),
    ({"lease_ttl": 30.7}, "lease_ttl"),
    ({"lease_ttl": "30"}, "lease_ttl"),
    ({"lease_ttl": 4}, "lease_ttl"),
    ({"mtu": 1400.5}, "mtu"),
    ({"etcd": {"timeout": -1}}, "etcd.timeout"),
    ({"etcd": {"timeout": 0}}, "etcd.timeout"),
    ({"etcd": {"timeout": float("nan")}}, "etcd.timeout"),
    ({"etcd": {"timeout": float("inf")}}, "etcd.timeout"),
    ({"etcd": {"timeout": "soon"}}, "etcd.timeout"),
    ({"etcd": {"prefix": 5}}, "etcd.prefix"),
    ({"public_ip": 5}, "public_ip"),
    ({"public_ip": ["198.18.0.1"]}, "public_ip"),
])
def test_wrong_types_and_ranges_are_refused_naming_the_key(values: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"node_name": "h1", **values})
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_sane_numbers_still_load() -> None:
    config = config_from_mapping({"node_name": "h1", "lease_ttl": 30, "socket_group": 0, "mtu": 1400,
                                  "etcd": {"timeout": 2.5}})
    assert (config.lease_ttl, config.socket_group, config.mtu, config.etcd.timeout) == (30, 0, 1400, 2.5)
    assert config_from_mapping({"node_name": "h1", "etcd": {"timeout": 3}}).etcd.timeout == 3


def test_a_flag_for_a_section_that_is_not_a_table_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('node_name = "h1"\netcd = 5\n')
    with pytest.raises(ConfigError, match=r"\[etcd\] must be a table"):
        _parse(["--config", str(path), "--etcd-prefix", "/x"])


@pytest.mark.parametrize("text, fragment", [
    ("etcd = 5\n", "[etcd] must be a table"),
    ("socket_group = -5\n", "socket_group"),
    ("lease_ttl = 30.7\n", "lease_ttl"),
    ("[etcd]\ntimeout = -1\n", "etcd.timeout"),
])
def test_overlayd_with_a_bad_config_prints_one_line_and_exits_2(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('node_name = "h1"\n' + text)
    # Should the config pass, a missing netns and private dirs stop the daemon before it touches anything.
    guard = ["--netns", "ovl-no-such-netns", "--netns-dir", str(tmp_path / "netns"),
             "--state-dir", str(tmp_path / "state"), "--run-dir", str(tmp_path / "run")]
    done = subprocess.run([sys.executable, "-m", "overlayd.daemon", "--config", str(path), *guard],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("overlayd: ") and fragment in lines[0], done.stderr
