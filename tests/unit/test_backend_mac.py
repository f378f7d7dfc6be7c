import random
from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlayd.backend.mac import gateway_mac, parse_mac_untrusted, random_local_mac
from overlayd.errors import ConfigError


def test_parse_normalises_case_and_whitespace() -> None:
    assert parse_mac_untrusted(" 02:AB:cd:00:11:FF\n") == "02:ab:cd:00:11:ff"


@pytest.mark.parametrize(
    "bad",
    ["", "02:ab:cd:00:11", "02:ab:cd:00:11:ff:00", "02-ab-cd-00-11-ff", "02:ab:cd:00:11:fg", "0x02abcd0011ff",
     "01:00:5e:00:00:01", "33:33:00:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00",
     None, 42, b"02:00:00:00:00:01"],
)
def test_parse_refuses_junk_multicast_and_zero(bad: object) -> None:
    with pytest.raises(ConfigError):
        parse_mac_untrusted(bad)


@given(st.integers(min_value=0, max_value=2**32))
def test_random_local_mac_is_a_valid_locally_administered_unicast(seed: int) -> None:
    mac = random_local_mac(random.Random(seed))
    assert parse_mac_untrusted(mac) == mac
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01


def test_random_local_mac_is_deterministic_per_rng_and_varies() -> None:
    assert random_local_mac(random.Random(7)) == random_local_mac(random.Random(7))
    assert len({random_local_mac(random.Random(i)) for i in range(50)}) == 50


def test_gateway_mac_is_a_local_unicast_address_named_after_the_gateway() -> None:
    assert gateway_mac(ip_address("10.244.3.1")) == "0a:58:0a:f4:03:01"
    assert gateway_mac(ip_address("fd00::a:1")) == "0a:58:00:0a:00:01"
    assert parse_mac_untrusted(gateway_mac(ip_address("10.244.3.1")))  # unicast, so a valid MAC
