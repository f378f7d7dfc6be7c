"""Daemon config: TOML plus flags, flags winning, clear errors for bad values."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from overlayd.config import add_daemon_arguments, config_from_args, config_from_mapping
from overlayd.errors import ConfigError


def _parse(argv: list[str]):
    parser = argparse.ArgumentParser()
    add_daemon_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_toml_file_and_flags_merge_with_flags_winning(tmp_path: Path) -> None:
    path = tmp_path / "overlayd.toml"
    path.write_text('node_name = "h1"\nbridge_name = "br9"\nlease_ttl = 30\n'
                    '[etcd]\nendpoints = ["http://198.18.0.2:2379"]\nprefix = "/x"\n')
    config = _parse(["--config", str(path), "--bridge", "ovl7", "--etcd-endpoints", "http://a:1,http://b:2"])
    assert config.node_name == "h1"
    assert config.bridge_name == "ovl7"
    assert config.lease_ttl == 30
    assert config.etcd.endpoints == ("http://a:1", "http://b:2")
    assert config.etcd.prefix == "/x"


def test_derived_names_follow_the_configured_prefixes(tmp_path: Path) -> None:
    config = config_from_mapping({"node_name": "n1", "link_prefix": "lab", "run_dir": str(tmp_path)})
    assert config.vxlan_device == "lab.vx"
    assert config.control_socket == tmp_path / "overlayd.sock"
    assert config.pod_run_dir == tmp_path / "pods"


@pytest.mark.parametrize("values, fragment", [
    ({"node_name": "Bad Name"}, "node_name"),
    ({"node_name": "h1", "link_prefix": "waytoolong"}, "link_prefix"),
    ({"node_name": "h1", "bridge_name": "a" * 16}, "bridge_name"),
    ({"node_name": "h1", "mtu": 100}, "mtu"),
    ({"node_name": "h1", "lease_ttl": 1}, "lease_ttl"),
    ({"node_name": "h1", "public_ip": "300.1.1.1"}, "public_ip"),
    ({"node_name": "h1", "etcd": {"endpoints": ["tcp://x"]}}, "etcd endpoint"),
    ({"node_name": "h1", "etcd": {"prefix": "noslash"}}, "etcd.prefix"),
    ({"node_name": "h1", "etcd": {"cert_file": "/c"}}, "go together"),
    ({"node_name": "h1", "bogus": 1}, "unknown config keys"),
    ({"node_name": "h1", "etcd": {"bogus": 1}}, "unknown [etcd] keys"),
    ({"node_name": "h1", "lease_ttl": True}, "lease_ttl"),
    ({"node_name": "h1", "log_level": "loud"}, "log_level"),
    ({"node_name": "h1", "wireguard": {"implementation": "boringtun"}}, "wireguard.implementation"),
])
def test_bad_values_are_refused_naming_the_key(values: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        config_from_mapping(values)


def test_missing_and_broken_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        _parse(["--config", str(tmp_path / "nope.toml")])
    broken = tmp_path / "broken.toml"
    broken.write_text("node_name = \n")
    with pytest.raises(ConfigError, match=str(broken)):
        _parse(["--config", str(broken)])


def test_every_wireguard_implementation_is_accepted() -> None:
    for name in ("auto", "kernel", "userspace", "wireguard-go"):
        config = config_from_mapping({"node_name": "h1", "wireguard": {"implementation": name}})
        assert config.wireguard.implementation == name
    assert _parse(["--node-name", "h1", "--wireguard-implementation", "wireguard-go"]).wireguard.implementation \
        == "wireguard-go"


def test_the_shipped_example_config_parses() -> None:
    example = Path(__file__).parents[2] / "deploy" / "overlayd.toml"
    config = _parse(["--config", str(example), "--node-name", "h1"])
    # As-is on a single host (issue 9): no Vagrant interface or address, etcd on this machine.
    assert config.public_interface is None and config.public_ip is None
    assert config.etcd.endpoints == ("http://127.0.0.1:2379",)
    assert config.wireguard.implementation == "auto"
    assert config.metrics_address == "127.0.0.1:9469"
