"""ClusterConfig / BackendConfig: defaults, round trips and refusal of bad untrusted input."""

from __future__ import annotations

import json
from ipaddress import IPv4Network, IPv6Network, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipam.config import BackendConfig, ClusterConfig
from ipam.errors import InvalidConfig


def test_empty_dict_gives_the_documented_defaults() -> None:
    config = ClusterConfig.from_dict_untrusted({})
    assert config == ClusterConfig()
    assert config.network == IPv4Network("10.244.0.0/16")
    assert config.subnet_len == 24
    assert config.subnet_count == 256
    assert (config.backend.type, config.backend.vni, config.backend.port) == ("vxlan", 1, 4789)
    assert dict(config.backend.options) == {}


def test_ipv6_network_defaults_to_slash_64_hosts() -> None:
    config = ClusterConfig.from_dict_untrusted({"network": "fd00:10:244::/48"})
    assert config.network == IPv6Network("fd00:10:244::/48")
    assert config.subnet_len == 64
    assert config.subnet_count == 65536


def test_host_gw_backend_has_neither_vni_nor_port() -> None:
    backend = BackendConfig.from_dict_untrusted({"type": "host-gw", "options": {"mtu": 9000}})
    assert (backend.type, backend.vni, backend.port) == ("host-gw", None, None)
    assert backend.to_dict() == {"type": "host-gw", "options": {"mtu": 9000}}
    assert BackendConfig.from_dict_untrusted(backend.to_dict()) == backend


def test_wireguard_backend_has_listen_port_and_no_vni() -> None:
    backend = BackendConfig.from_dict_untrusted({"type": "wireguard", "options": {"persistent_keepalive": 25}})
    assert (backend.type, backend.vni, backend.port) == ("wireguard", None, 51820)
    assert backend.to_dict() == {"type": "wireguard", "port": 51820, "options": {"persistent_keepalive": 25}}


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"network": "10.0.0.0/8", "subnet_len": 29, "backend": {"type": "vxlan", "vni": 16777215, "port": 1}},
        {"network": "192.168.0.0/16", "subnet_len": 17, "backend": {"type": "vxlan", "options": {"mtu": 1450}}},
        {"network": "fd00::/48", "subnet_len": 125, "backend": {"type": "wireguard", "port": 65535}},
        {"network": "2001:db8::/32", "backend": {"type": "wireguard", "options": {"mtu": 1420}}},
    ],
)
def test_round_trip_through_dict_and_json(doc: dict) -> None:
    config = ClusterConfig.from_dict_untrusted(doc)
    assert ClusterConfig.from_dict_untrusted(config.to_dict()) == config
    assert ClusterConfig.from_json_untrusted(config.to_json()) == config
    assert ClusterConfig.from_json_untrusted(config.to_json().encode()) == config
    # to_json is plain JSON other tools (etcdctl, jq) can read.
    assert json.loads(config.to_json())["network"] == str(config.network)


def test_options_are_read_only_copies() -> None:
    options = {"mtu": 1400}
    backend = BackendConfig("vxlan", options=options)
    options["mtu"] = 9000
    assert backend.options["mtu"] == 1400
    with pytest.raises(TypeError):
        backend.options["mtu"] = 1  # type: ignore[index]
    assert hash(backend) == hash(BackendConfig("vxlan", options={"mtu": 1400}))


def test_contains_subnet_checks_family_length_and_place() -> None:
    config = ClusterConfig()
    assert config.contains_subnet(ip_network("10.244.255.0/24"))
    assert not config.contains_subnet(ip_network("10.245.0.0/24"))
    assert not config.contains_subnet(ip_network("10.244.0.0/25"))
    assert not config.contains_subnet(ip_network("fd00::/24"))


@pytest.mark.parametrize(
    ("doc", "field", "words"),
    [
        ({"network": 10}, "network", "CIDR"),
        ({"network": "10.244.0.0"}, "network", "CIDR"),
        ({"network": "10.244.1.0/16"}, "network", "host bits"),
        ({"network": "banana/16"}, "network", "does not appear"),
        ({"network": "0.0.0.0/0"}, "network", "this-network"),
        ({"network": "127.0.0.0/16"}, "network", "loopback"),
        ({"network": "224.0.0.0/16"}, "network", "multicast"),
        ({"network": "169.254.0.0/16"}, "network", "link-local"),
        ({"network": "fe80::/48"}, "network", "link-local"),
        ({"network": "::ffff:10.0.0.0/112"}, "network", "IPv4-mapped"),
        ({"network": "ff00::/48"}, "network", "multicast"),
        ({"network": "fd00::%eth0/48"}, "network", "scope"),
        ({"network": "10.0.0.0/29", "subnet_len": 29}, "network", "too small"),
        ({"subnet_len": 16}, "subnet_len", "17..29"),
        ({"subnet_len": 8}, "subnet_len", "17..29"),
        ({"subnet_len": 30}, "subnet_len", "17..29"),
        ({"network": "fd00::/48", "subnet_len": 126}, "subnet_len", "49..125"),
        ({"network": "fd00::/48", "subnet_len": 24}, "subnet_len", "49..125"),
        ({"subnet_len": "24"}, "subnet_len", "integer"),
        ({"subnet_len": True}, "subnet_len", "integer"),
        ({"subnet_len": 24.0}, "subnet_len", "integer"),
        ({"backend": "vxlan"}, "backend", "JSON object"),
        ({"backend": {"type": "gre"}}, "backend.type", "unknown backend type 'gre'"),
        ({"backend": {"type": 1}}, "backend.type", "string"),
        ({"backend": {"vni": 0}}, "backend.vni", "1..16777215"),
        ({"backend": {"vni": 16777216}}, "backend.vni", "1..16777215"),
        ({"backend": {"vni": "1"}}, "backend.vni", "integer"),
        ({"backend": {"port": 0}}, "backend.port", "1..65535"),
        ({"backend": {"port": 65536}}, "backend.port", "1..65535"),
        ({"backend": {"port": False}}, "backend.port", "integer"),
        ({"backend": {"type": "wireguard", "vni": 1}}, "backend.vni", "no VNI"),
        ({"backend": {"type": "wireguard", "port": 70000}}, "backend.port", "1..65535"),
        ({"backend": {"type": "host-gw", "vni": 1}}, "backend.vni", "no VNI"),
        ({"backend": {"type": "host-gw", "port": 4789}}, "backend.port", "has no port"),
        ({"backend": {"options": []}}, "backend.options", "JSON object"),
        ({"backend": {"options": {"mtu": 100}}}, "backend.options.mtu", "1280..65535"),
        (
            {"backend": {"type": "wireguard", "options": {"persistent_keepalive": -1}}},
            "backend.options.persistent_keepalive",
            "0..65535",
        ),
    ],
)
def test_invalid_dicts_name_the_bad_field(doc: dict, field: str, words: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        ClusterConfig.from_dict_untrusted(doc)
    assert info.value.field == field
    assert words in str(info.value)
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("[1, 2]", "config must be a JSON object"),
        ("null", "config must be a JSON object"),
        ('{"subnet_len": 24, "subnet_len": 25}', "repeats the key 'subnet_len'"),
        ("[" * 100_000 + "]" * 100_000, "too long"),
        ("[" * 30_000 + "]" * 30_000, "not valid JSON"),
    ],
)
def test_invalid_json_is_refused_clearly(data: bytes | str, words: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        ClusterConfig.from_json_untrusted(data)
    assert info.value.field is None
    assert words in str(info.value)


def test_constructors_validate_as_well() -> None:
    with pytest.raises(InvalidConfig, match="subnet_len"):
        ClusterConfig(IPv4Network("10.244.0.0/16"), 16)
    with pytest.raises(InvalidConfig, match="network"):
        ClusterConfig("10.244.0.0/16")  # type: ignore[arg-type]
    with pytest.raises(InvalidConfig, match="backend.vni"):
        BackendConfig("vxlan", vni=-1)
    with pytest.raises(InvalidConfig, match="backend.type"):
        BackendConfig("ipip")


_backends = st.one_of(
    st.builds(
        BackendConfig,
        type=st.just("vxlan"),
        vni=st.none() | st.integers(1, 2**24 - 1),
        port=st.none() | st.integers(1, 65535),
        options=st.fixed_dictionaries({}, optional={"mtu": st.integers(1280, 65535)}),
    ),
    st.builds(
        BackendConfig,
        type=st.just("wireguard"),
        port=st.none() | st.integers(1, 65535),
        options=st.fixed_dictionaries(
            {}, optional={"mtu": st.integers(1280, 65535), "persistent_keepalive": st.integers(0, 65535)}
        ),
    ),
    st.builds(BackendConfig, type=st.just("host-gw"),
              options=st.fixed_dictionaries({}, optional={"mtu": st.integers(1280, 65535)})),
)


@st.composite
def _configs(draw: st.DrawFn) -> ClusterConfig:
    if draw(st.booleans()):
        network: IPv4Network | IPv6Network = IPv4Network(("10.0.0.0", draw(st.integers(8, 28))))
    else:
        network = IPv6Network(("fd00::", draw(st.integers(8, 124))))
    subnet_len = draw(st.integers(network.prefixlen + 1, network.max_prefixlen - 3))
    return ClusterConfig(network, subnet_len, draw(_backends))


@given(_configs())
def test_every_valid_config_round_trips(config: ClusterConfig) -> None:
    assert ClusterConfig.from_json_untrusted(config.to_json()) == config
    assert config.subnet_count == 2 ** (config.subnet_len - config.network.prefixlen)


def test_fields_a_newer_version_wrote_are_kept_named_and_written_back() -> None:
    # A rolling upgrade: a newer overlayctl wrote fields (and an option) this version does not know.
    doc = {"network": "10.244.0.0/16", "subnet_len": 24, "ipam_mode": "dense",
           "backend": {"type": "vxlan", "port": 4789, "vni": 1, "learning": False,
                       "options": {"mtu": 1400, "persistent_keepalive": 25}}}
    config = ClusterConfig.from_dict_untrusted(doc)
    assert config.unknown_fields() == ["ipam_mode", "backend.learning", "backend.options.persistent_keepalive"]
    assert dict(config.backend.options) == {"mtu": 1400}  # what this version acts on
    assert config.to_dict() == doc  # written back verbatim, so a signature over to_dict() covers them
    assert config == ClusterConfig.from_json_untrusted(config.to_json())
    assert config != ClusterConfig.from_dict_untrusted({**doc, "ipam_mode": "sparse"})
    assert ClusterConfig().unknown_fields() == []


def test_an_unknown_backend_type_is_still_refused() -> None:
    with pytest.raises(InvalidConfig, match="unknown backend type"):
        ClusterConfig.from_dict_untrusted({"backend": {"type": "geneve", "future": 1}})
