from ipaddress import IPv4Network, IPv6Network, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlayd.cluster.errors import RecordError
from overlayd.cluster.keys import DEFAULT_PREFIX, KeyLayout, format_subnet, parse_subnet_untrusted
from overlayd.errors import ConfigError


def test_default_layout() -> None:
    layout = KeyLayout()
    assert layout.prefix == DEFAULT_PREFIX == "/overlayd/network"
    assert layout.config == "/overlayd/network/config"
    assert layout.subnets == "/overlayd/network/subnets/"
    assert layout.cooldown == "/overlayd/network/cooldown/"
    assert layout.subnet_key(ip_network("10.244.3.0/24")) == "/overlayd/network/subnets/10.244.3.0-24"
    assert layout.cooldown_key(ip_network("10.244.3.0/24")) == "/overlayd/network/cooldown/10.244.3.0-24"


def test_ipv6_subnet_key() -> None:
    layout = KeyLayout("/x")
    key = layout.subnet_key(ip_network("fd00:10:0:3::/64"))
    assert key == "/x/subnets/fd00:10:0:3::-64"
    assert layout.subnet_of_key_untrusted(key.encode()) == ip_network("fd00:10:0:3::/64")


@pytest.mark.parametrize("prefix", ["", "overlayd", "/overlayd/", "/"])
def test_bad_prefix_refused(prefix: str) -> None:
    with pytest.raises(ConfigError):
        KeyLayout(prefix)


@pytest.mark.parametrize(
    "text",
    [
        "10.244.3.0/24",  # slash instead of dash
        "10.244.3.1-24",  # host bits set
        "10.244.03.0-24",  # leading zero
        "10.244.3.0-024",  # leading zero in the length
        "10.244.3.0-+24",
        "10.244.3.0- 24",
        "10.244.3.0-33",
        "10.244.3.0",
        "10.244.3.0-24-1",
        "FD00::-64",  # not the canonical lower-case spelling
        "fd00:0::-64",  # not compressed
        "garbage-8",
        "",
        "1" * 200,
    ],
)
def test_non_canonical_subnet_segments_refused(text: str) -> None:
    with pytest.raises(RecordError):
        parse_subnet_untrusted(text)


def test_subnet_key_must_be_under_the_prefix() -> None:
    layout = KeyLayout("/a")
    with pytest.raises(RecordError, match="not under"):
        layout.subnet_of_key_untrusted(b"/b/subnets/10.0.0.0-24")
    with pytest.raises(RecordError, match="not under"):
        layout.subnet_of_key_untrusted(b"/a/cooldown/10.0.0.0-24")
    with pytest.raises(RecordError, match="not under"):
        layout.cooling_subnet_of_key_untrusted(b"/a/subnets/10.0.0.0-24")
    with pytest.raises(RecordError, match="ASCII"):
        layout.subnet_of_key_untrusted("/a/subnets/10.0.0.0-2\u0664".encode())
    assert layout.cooling_subnet_of_key_untrusted(b"/a/cooldown/10.0.0.0-24") == ip_network("10.0.0.0/24")


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_ipv4_round_trip(address: int, length: int) -> None:
    subnet = IPv4Network((address, length), strict=False)
    assert parse_subnet_untrusted(format_subnet(subnet)) == subnet


@given(st.integers(0, 2**128 - 1), st.integers(0, 128))
def test_ipv6_round_trip(address: int, length: int) -> None:
    subnet = IPv6Network((address, length), strict=False)
    assert parse_subnet_untrusted(format_subnet(subnet)) == subnet


@given(st.text(max_size=60))
def test_arbitrary_text_gives_a_subnet_or_record_error(text: str) -> None:
    try:
        subnet = parse_subnet_untrusted(text)
    except RecordError:
        return
    assert format_subnet(subnet) == text
