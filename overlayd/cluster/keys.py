"""Where overlayd keeps cluster state in etcd.

Everything lives under one prefix, `/overlayd/network` by default (`[etcd] prefix`):

    {prefix}/config
        The cluster config, JSON (ipam.config.ClusterConfig), e.g.
        {"network": "10.244.0.0/16", "subnet_len": 24,
         "backend": {"type": "vxlan", "vni": 1, "port": 4789, "options": {}}}
        Written by `overlayctl network init`; no lease. It is not changed while
        any subnet lease exists unless forced. With trust (overlayd/trust/configsig.py)
        it also holds the cluster CA's "signature"; daemons with a trust anchor refuse
        a config without a valid one.

    {prefix}/subnets/<subnet>
        One key per host subnet lease; <subnet> is the subnet with "/" written "-"
        (10.244.3.0-24, fd00:10:0:3::-64). The value is the host record, JSON:
        {"node": "host-1", "public_ip": "198.18.0.11",
         "backend": {"type": "vxlan", "vtep_mac": "02:42:c6:12:00:0b"}}
        or for WireGuard {"type": "wireguard", "public_key": "<base64, 32 bytes>",
        "port": "51820"}. Backend values are strings (at most 16 fields). The key is
        attached to the host's etcd lease (TTL `lease_ttl`, default 60 s), which the
        daemon keeps alive every TTL/3, so a dead host's subnet disappears by
        itself. Keys are created only by a transaction that requires the key to be
        absent, so two hosts never hold one subnet; a restarted daemon takes its
        own key over by a transaction on the key's mod_revision, so the key never
        disappears across a restart.

    {prefix}/cooldown/<subnet>
        Value "" attached to a one-shot lease of `lease_ttl` seconds. Written
        (only if absent) by a daemon releasing its subnet and by every daemon whose
        watch sees a subnet key deleted. Subnets cooling down are handed out only
        when no other subnet is free, so peers' stale routes age out first.

    {prefix}/revoked
        The revocation list: serials of host certificates the cluster CA withdrew,
        with a generation, signed by the CA (overlayd/trust/revocation.py). Written by
        `overlayctl ca revoke` (compare-and-set on its mod_revision); no lease.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network

from overlayd.cluster.errors import RecordError
from overlayd.errors import ConfigError

IPNetwork = IPv4Network | IPv6Network

DEFAULT_PREFIX = "/overlayd/network"
# Longest key text we accept for a subnet: an IPv6 address (39 chars) plus "-128".
_MAX_SUBNET_TEXT = 43


def format_subnet(subnet: IPNetwork) -> str:
    """The subnet as a key segment: "/" cannot appear inside one."""
    return f"{subnet.network_address}-{subnet.prefixlen}"


class _Subnet4(IPv4Network):
    """An IPv4Network that computes its hash once. Subnets key every peer map, and the
    standard class hashes anew on each lookup: thousands of lookups per event."""

    @functools.cached_property
    def _hash(self) -> int:
        return IPv4Network.__hash__(self)

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"IPv4Network('{self}')"


class _Subnet6(IPv6Network):
    """An IPv6Network that computes its hash once (see _Subnet4)."""

    @functools.cached_property
    def _hash(self) -> int:
        return IPv6Network.__hash__(self)

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"IPv6Network('{self}')"


def parse_subnet_untrusted(text: str) -> IPNetwork:
    """Parse a key segment written by format_subnet; only the canonical spelling is accepted."""
    if len(text) > _MAX_SUBNET_TEXT or text.count("-") != 1:
        raise RecordError(f"subnet key segment {text[:_MAX_SUBNET_TEXT]!r} is not <address>-<length>")
    address, length = text.split("-")
    try:
        # Leading zeros, "+" or spaces would give two keys for one subnet, hence the canonical check.
        plain = ip_network(f"{address}/{length}", strict=True)
        subnet: IPNetwork = (_Subnet4 if plain.version == 4 else _Subnet6)(f"{address}/{length}")
    except ValueError as exc:
        raise RecordError(f"subnet key segment {text!r}: {exc}") from None
    if format_subnet(subnet) != text:
        raise RecordError(f"subnet key segment {text!r} is not canonical (expected {format_subnet(subnet)!r})")
    return subnet


@dataclass(frozen=True)
class KeyLayout:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise ConfigError(f"etcd prefix {self.prefix!r} must start with '/' and not end with '/'")

    @property
    def config(self) -> str:
        return f"{self.prefix}/config"

    @property
    def revoked(self) -> str:
        return f"{self.prefix}/revoked"

    @property
    def subnets(self) -> str:
        """Prefix of every subnet lease key (with its trailing slash)."""
        return f"{self.prefix}/subnets/"

    @property
    def cooldown(self) -> str:
        """Prefix of every cooldown key (with its trailing slash)."""
        return f"{self.prefix}/cooldown/"

    def subnet_key(self, subnet: IPNetwork) -> str:
        return self.subnets + format_subnet(subnet)

    def cooldown_key(self, subnet: IPNetwork) -> str:
        return self.cooldown + format_subnet(subnet)

    def subnet_of_key_untrusted(self, key: bytes) -> IPNetwork:
        """The subnet named by a key under subnets/; RecordError for anything else."""
        return self._parse_under(self.subnets, key)

    def cooling_subnet_of_key_untrusted(self, key: bytes) -> IPNetwork:
        """The subnet named by a key under cooldown/; RecordError for anything else."""
        return self._parse_under(self.cooldown, key)

    @staticmethod
    def _parse_under(under: str, key: bytes) -> IPNetwork:
        try:
            text = key.decode("ascii")
        except UnicodeDecodeError:
            raise RecordError(f"key {key[:80]!r} is not ASCII") from None
        if not text.startswith(under):
            raise RecordError(f"key {text[:80]!r} is not under {under!r}")
        return parse_subnet_untrusted(text[len(under) :])
