import ipaddress

import pytest

from overlayd.backend.objects import Address, Link, Route
from overlayd.backend.underlay import Underlay, choose_underlay
from overlayd.errors import ConfigError

ip = ipaddress.ip_address
LINKS = [
    Link(1, "lo", None, None, 65536, True),
    Link(2, "eth0", "veth", "02:00:00:00:00:02", 1500, True),
    Link(3, "eth1", "veth", "02:00:00:00:00:03", 9000, True),
    Link(4, "eth2", "veth", "02:00:00:00:00:04", 1500, True),
]
ADDRS = [
    Address(1, ipaddress.ip_interface("127.0.0.1/8"), 0, 254),
    Address(2, ipaddress.ip_interface("fe80::2/64"), 0, 253),
    Address(2, ipaddress.ip_interface("2001:db8::2/64"), 0, 0),
    Address(2, ipaddress.ip_interface("198.18.0.11/24"), 0, 0),
    Address(2, ipaddress.ip_interface("198.18.0.99/24"), 0, 0),  # secondary, listed later
    Address(3, ipaddress.ip_interface("198.19.0.11/24"), 0, 0),
    Address(4, ipaddress.ip_interface("2001:db8:4::4/64"), 0, 0),
]


def default(gw: str, oif: int | None, priority: int = 0) -> Route:
    dst = ipaddress.ip_network("0.0.0.0/0" if ip(gw).version == 4 else "::/0")
    return Route(dst, 254, 4, 1, oif, ip(gw), False, priority, 0, 0)


def test_public_ip_names_its_interface() -> None:
    expected = Underlay(ip("198.19.0.11"), "eth1", 3, 9000)
    assert choose_underlay(LINKS, ADDRS, [], public_ip=ip("198.19.0.11")) == expected
    assert choose_underlay(LINKS, ADDRS, [], public_ip=ip("2001:db8::2"), interface="eth0").ifindex == 2


def test_public_ip_must_exist_and_agree_with_the_interface() -> None:
    with pytest.raises(ConfigError, match=r"198\.18\.0\.200 is not assigned"):
        choose_underlay(LINKS, ADDRS, [], public_ip=ip("198.18.0.200"))
    with pytest.raises(ConfigError, match="is on eth1, not on the configured interface eth0"):
        choose_underlay(LINKS, ADDRS, [], public_ip=ip("198.19.0.11"), interface="eth0")


def test_interface_gives_its_first_global_ipv4_then_ipv6() -> None:
    assert choose_underlay(LINKS, ADDRS, [], interface="eth0") == Underlay(ip("198.18.0.11"), "eth0", 2, 1500)
    assert choose_underlay(LINKS, ADDRS, [], interface="eth2").ip == ip("2001:db8:4::4")
    with pytest.raises(ConfigError, match="interface nosuch0 not found"):
        choose_underlay(LINKS, ADDRS, [], interface="nosuch0")
    with pytest.raises(ConfigError, match="lo has no global IP"):
        choose_underlay(LINKS, ADDRS, [], interface="lo")


def test_default_route_lowest_metric_ipv4_first() -> None:
    routes = [default("198.18.0.1", 2, priority=100), default("198.19.0.1", 3, priority=50),
              default("2001:db8:4::1", 4)]
    assert choose_underlay(LINKS, ADDRS, routes).ifname == "eth1"
    assert choose_underlay(LINKS, ADDRS, routes[2:]) == Underlay(ip("2001:db8:4::4"), "eth2", 4, 1500)


def test_default_route_without_usable_address_or_device_is_skipped() -> None:
    other_table = Route(ipaddress.ip_network("0.0.0.0/0"), 100, 4, 1, 3, ip("198.19.0.1"), False, 0, 0, 0)
    routes = [default("198.18.0.1", None), other_table, default("2001:db8::1", 3), default("198.18.0.1", 2, 10)]
    assert choose_underlay(LINKS, ADDRS, routes).ip == ip("198.18.0.11")
    with pytest.raises(ConfigError, match="no default route"):
        choose_underlay(LINKS, ADDRS, routes[:3])
    with pytest.raises(ConfigError, match="no default route"):
        choose_underlay(LINKS, ADDRS, [])
