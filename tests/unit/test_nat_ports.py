"""Published ports: parsing, checking and clash detection (pure)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from overlayd.config import config_from_mapping
from overlayd.errors import ConfigError, UsageError
from overlayd.nat.ports import Publication, find_clash, parse_publish, publications_untrusted


@pytest.mark.parametrize(("spec", "expected"), [
    ("8080:80/tcp", Publication("tcp", 8080, 80)),
    ("8080:80", Publication("tcp", 8080, 80)),
    ("53:5353/udp", Publication("udp", 53, 5353)),
    ("198.18.0.11:8080:80/tcp", Publication("tcp", 8080, 80, IPv4Address("198.18.0.11"))),
])
def test_publish_specs_parse_and_print_back(spec: str, expected: Publication) -> None:
    assert parse_publish(spec) == expected
    assert parse_publish(str(expected)) == expected


@pytest.mark.parametrize("spec", [
    "8080", "0:80/tcp", "8080:65536/tcp", "8080:80/sctp", "8080:80/", "x:8080:80", "1.2.3:8080:80",
    "0.0.0.0:8080:80", "224.0.0.1:1:1", '8080:80/tcp"; flush ruleset', "::1:8080:80", " 8080:80",
])
def test_bad_publish_specs_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError):
        parse_publish(spec)


@pytest.mark.parametrize("data", [
    None, {}, [{"host_port": "8080", "pod_port": 80}], [{"host_port": True, "pod_port": 80}],
    [{"host_port": 1, "pod_port": 2, "protocol": 6}], [{"host_port": 1, "pod_port": 2, "extra": 1}],
    [{"host_port": 1, "pod_port": 2, "host_ip": "1.2.3.4 drop"}], [{"host_port": 1, "pod_port": 2}] * 2,
    [{"host_port": p, "pod_port": 1} for p in range(1, 70)],
])
def test_untrusted_lists_are_checked(data: object) -> None:
    with pytest.raises(UsageError):
        publications_untrusted(data)


def test_untrusted_lists_round_trip_sorted() -> None:
    items = [parse_publish("9000:1/udp"), parse_publish("1.2.3.4:8080:80/tcp"), parse_publish("8080:81/udp")]
    parsed = publications_untrusted([p.to_dict() for p in items])
    assert [str(p) for p in parsed] == ["1.2.3.4:8080:80/tcp", "8080:81/udp", "9000:1/udp"]


def test_clashes_are_same_protocol_and_port_on_overlapping_addresses() -> None:
    taken = {"web": [parse_publish("8080:80/tcp")], "dns": [parse_publish("198.18.0.11:53:53/udp")]}
    assert "pod web" in (find_clash([parse_publish("8080:9/tcp")], taken) or "")
    assert "pod web" in (find_clash([parse_publish("198.18.0.11:8080:9/tcp")], taken) or "")
    assert "pod dns" in (find_clash([parse_publish("53:53/udp")], taken) or "")
    assert find_clash([parse_publish("8080:80/udp")], taken) is None
    assert find_clash([parse_publish("198.18.0.12:53:53/udp")], taken) is None


def test_daemon_config_ip_masq_and_table_name() -> None:
    assert config_from_mapping({"node_name": "a"}).ip_masq is True
    assert config_from_mapping({"node_name": "a", "ip_masq": False}).ip_masq is False
    assert config_from_mapping({"node_name": "a", "nft_table": "ovl_h1"}).nft_table == "ovl_h1"
    for bad in ({"ip_masq": "no"}, {"ip_masq": 0}, {"nft_table": "x y"}, {"nft_table": 'a"'}, {"nft_table": ""},
                {"nft_table": "a" * 33}):
        with pytest.raises(ConfigError):
            config_from_mapping({"node_name": "a", **bad})
