"""ClusterNames: the snapshot the zone is built from."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest

from overlayd.dns.names import ClusterNames

IP = IPv4Address("10.96.0.10")


def test_defaults_and_copies() -> None:
    services = {"web": IP}
    names = ClusterNames(services=services)
    services["api"] = IP
    assert names.domain == "cluster.local" and dict(names.services) == {"web": IP} and dict(names.pods) == {}
    assert names == ClusterNames("cluster.local", {}, {"web": IP})
    with pytest.raises(TypeError):
        names.services["x"] = IP  # type: ignore[index]


@pytest.mark.parametrize("domain", ["", "Cluster.local", "cluster.local.", "-x.local", "a..b", "a_b.local",
                                    "x" * 64 + ".local", ".".join(["abcdefghi"] * 19)])
def test_bad_domains_are_refused(domain: str) -> None:
    with pytest.raises(ValueError, match="DNS domain"):
        ClusterNames(domain)


@pytest.mark.parametrize("name", ["", "Web", "web.x", "-web", "web-", "w_b", "x" * 64])
def test_names_must_be_lowercase_dns_labels(name: str) -> None:
    with pytest.raises(ValueError, match="service names"):
        ClusterNames(services={name: IP})
    with pytest.raises(ValueError, match="pod names"):
        ClusterNames(pods={name: IP})


def test_addresses_must_be_ipv4() -> None:
    with pytest.raises(ValueError, match="IPv4Address"):
        ClusterNames(pods={"p": IPv6Address("fd00::1")})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="IPv4Address"):
        ClusterNames(services={"web": "10.96.0.10"})  # type: ignore[dict-item]


def test_the_longest_names_fit() -> None:
    domain = ".".join(["a" * 60] * 3)  # 182 characters: 63 + ".svc." + 182 = 250
    ClusterNames(domain, services={"x" * 63: IP}, pods={"y" * 63: IP})
