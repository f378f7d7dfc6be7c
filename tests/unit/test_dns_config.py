"""The daemon config's [dns] keys for cluster DNS: domain, port, and where it forwards."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from overlayd.errors import ConfigError
from overlayd.pods.dns import DnsConfig, dns_config_from_mapping


def test_defaults() -> None:
    config = dns_config_from_mapping(None)
    assert (config.domain, config.port) == ("cluster.local", 53)


def test_domain_and_port_are_read() -> None:
    config = dns_config_from_mapping({"domain": "corp.internal", "port": 5353})
    assert (config.domain, config.port) == ("corp.internal", 5353)


@pytest.mark.parametrize("values", [{"domain": "Cluster.Local"}, {"domain": ""}, {"domain": 5},
                                    {"domain": "a..b"}, {"port": 0}, {"port": 70000}, {"port": "53"},
                                    {"port": True}])
def test_bad_values_are_config_errors(values: dict) -> None:
    with pytest.raises(ConfigError, match=f"dns.{next(iter(values))}"):
        dns_config_from_mapping(values)


def test_upstreams_are_the_servers_or_else_the_hosts_resolvers_loopback_included(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch corp.example\n")
    assert DnsConfig(resolv_conf=resolv).upstreams() == (ip_address("127.0.0.53"), ip_address("192.0.2.53"))
    assert DnsConfig(resolv_conf=resolv, servers=(ip_address("10.0.0.2"),)).upstreams() == (ip_address("10.0.0.2"),)
    assert DnsConfig(resolv_conf=tmp_path / "absent").upstreams() == ()
