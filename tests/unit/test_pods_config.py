"""PodNetworkConfig validation and the paths derived for a pod."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from overlayd.errors import ConfigError, UsageError
from overlayd.pods.config import PodNetworkConfig, pod_paths


def config(**overrides: object) -> PodNetworkConfig:
    values: dict[str, object] = {"bridge": "ovl0", "gateway": ip_address("10.244.3.1"), "prefixlen": 24}
    values.update(overrides)
    return PodNetworkConfig(**values)  # type: ignore[arg-type]


def test_defaults_and_normalisation() -> None:
    c = config(gateway="10.244.3.1", netns_dir="/tmp/ns", pod_run_dir="/tmp/pods")
    assert c.gateway == ip_address("10.244.3.1")
    assert c.netns_dir == Path("/tmp/ns") and c.pod_run_dir == Path("/tmp/pods")
    assert (c.link_prefix, c.netns_prefix, c.mtu) == ("ovl", "ovl-", 1450)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"bridge": ""}, "bridge"),
        ({"bridge": "a" * 16}, "bridge"),
        ({"bridge": "br 0"}, "bridge"),
        ({"link_prefix": "toolong1"}, "link prefix"),
        ({"netns_prefix": ""}, "netns prefix"),
        ({"netns_prefix": "a/b"}, "netns prefix"),
        ({"gateway": "10.244.3"}, "not an IP address"),
        ({"prefixlen": 33}, "prefix length"),
        ({"prefixlen": 0}, "prefix length"),
        ({"mtu": 67}, "mtu"),
        ({"mtu": 65536}, "mtu"),
    ],
)
def test_invalid_configs_are_config_errors(overrides: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        config(**overrides)


@pytest.mark.parametrize(
    ("ip", "usable"),
    [("10.244.3.2", True), ("10.244.3.254", True), ("10.244.3.1", False), ("10.244.3.0", False),
     ("10.244.3.255", False), ("10.244.4.2", False), ("fd00::2", False)],
)
def test_pod_subnet_contains(ip: str, usable: bool) -> None:
    assert config().pod_subnet_contains(ip_address(ip)) is usable


def test_ipv6_pod_subnet() -> None:
    c = config(gateway="fd00:10:244:3::1", prefixlen=64)
    assert c.pod_subnet_contains(ip_address("fd00:10:244:3::ffff"))
    assert not c.pod_subnet_contains(ip_address("fd00:10:244:3::"))
    assert not c.pod_subnet_contains(ip_address("10.244.3.2"))


def test_pod_paths() -> None:
    c = config(netns_dir="/run/netns", netns_prefix="ovl-", pod_run_dir="/run/overlayd/pods", link_prefix="ovl")
    ns = pod_paths(c, "web-1")
    assert ns.netns_name == "ovl-web-1"
    assert ns.net == Path("/run/netns/ovl-web-1")
    assert (ns.uts, ns.ipc) == (Path("/run/overlayd/pods/web-1/uts"), Path("/run/overlayd/pods/web-1/ipc"))
    assert ns.pod_dir == Path("/run/overlayd/pods/web-1")
    assert ns.host_veth.startswith("ovl") and len(ns.host_veth) == 11
    assert ns.resolv_conf == Path("/etc/netns/ovl-web-1/resolv.conf")  # where `ip netns exec` looks
    assert ns.to_dict() == {"net": "/run/netns/ovl-web-1", "uts": "/run/overlayd/pods/web-1/uts",
                            "ipc": "/run/overlayd/pods/web-1/ipc", "resolv_conf": "/etc/netns/ovl-web-1/resolv.conf"}


def test_pod_paths_refuse_names_that_would_escape_the_directories() -> None:
    with pytest.raises(UsageError):
        pod_paths(config(), "../../etc")
