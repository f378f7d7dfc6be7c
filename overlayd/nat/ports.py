"""Published ports (pure): `[HOST_IP:]HOST_PORT:POD_PORT/PROTO`, parsed, stored and checked for clashes.

A publication is all that reaches nft from a user, so every field is checked here: the
protocol from a closed set, ports as integers in range, the host address as an IPv4
address object. The ruleset generator only ever formats these checked values.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from overlayd.errors import UsageError

PROTOCOLS = ("tcp", "udp")
MAX_PUBLICATIONS = 64  # per pod: one rule each, and a request must stay small

_SPEC_RE = re.compile(r"^(?:(?P<host_ip>[0-9.]+):)?(?P<host_port>[0-9]{1,5}):(?P<pod_port>[0-9]{1,5})"
                      r"(?:/(?P<protocol>[a-z]+))?$")


@dataclass(frozen=True)
class Publication:
    """Host port `host_port` (on `host_ip`, or every local address) forwarded to the pod's `pod_port`."""

    protocol: str
    host_port: int
    pod_port: int
    host_ip: ipaddress.IPv4Address | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise UsageError(f"protocol {self.protocol!r}: tcp or udp")
        for what, port in (("host port", self.host_port), ("pod port", self.pod_port)):
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise UsageError(f"{what} {port!r}: a whole number in 1..65535")
        if self.host_ip is not None:
            if not isinstance(self.host_ip, ipaddress.IPv4Address):
                raise UsageError(f"host address {self.host_ip!r}: an IPv4 address")
            if self.host_ip.is_unspecified or self.host_ip.is_multicast:
                raise UsageError(f"host address {self.host_ip}: a unicast address of this host")

    def __str__(self) -> str:
        host = f"{self.host_ip}:" if self.host_ip is not None else ""
        return f"{host}{self.host_port}:{self.pod_port}/{self.protocol}"

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "host_port": self.host_port, "pod_port": self.pod_port,
                "host_ip": str(self.host_ip) if self.host_ip is not None else None}

    @classmethod
    def from_dict_untrusted(cls, data: object) -> Publication:
        """From the pod store or the control socket; UsageError naming the problem."""
        fields = {"protocol", "host_port", "pod_port", "host_ip"}
        if not isinstance(data, Mapping) or not set(data) <= fields or not {"host_port", "pod_port"} <= set(data):
            raise UsageError(f"a published port is an object with {sorted(fields)}, got {data!r:.80}")
        protocol, host_ip = data.get("protocol", "tcp"), data.get("host_ip")
        if not isinstance(protocol, str) or not (host_ip is None or isinstance(host_ip, str)):
            raise UsageError("a published port's protocol and host_ip are strings")
        return cls(protocol, data["host_port"], data["pod_port"], _host_ip(host_ip) if host_ip else None)

    def overlaps(self, other: Publication) -> bool:
        """Whether both would take the same packets (same protocol and port, addresses overlapping)."""
        return (self.protocol == other.protocol and self.host_port == other.host_port
                and (self.host_ip is None or other.host_ip is None or self.host_ip == other.host_ip))


def parse_publish(spec: str) -> Publication:
    """`8080:80/tcp`, `8080:80/udp`, `8080:80` (tcp) or `198.18.0.11:8080:80/tcp`."""
    match = _SPEC_RE.match(spec)
    if match is None:
        raise UsageError(f"--publish {spec!r}: expected [HOST_IP:]HOST_PORT:POD_PORT[/tcp|/udp]")
    host_ip = match["host_ip"]
    return Publication(match["protocol"] or "tcp", int(match["host_port"]), int(match["pod_port"]),
                       _host_ip(host_ip) if host_ip else None)


def publications_untrusted(data: object) -> tuple[Publication, ...]:
    """A list of publications (control socket, pod store): checked, sorted, no clashes among them."""
    if not isinstance(data, list) or len(data) > MAX_PUBLICATIONS:
        raise UsageError(f"published ports: a list of at most {MAX_PUBLICATIONS}")
    items = tuple(sorted((Publication.from_dict_untrusted(item) for item in data), key=sort_key))
    for i, item in enumerate(items):
        for other in items[i + 1:]:
            if item.overlaps(other):
                raise UsageError(f"published ports {item} and {other} take the same host port")
    return items


def sort_key(pub: Publication) -> tuple[str, int, str, int]:
    return (pub.protocol, pub.host_port, str(pub.host_ip or ""), pub.pod_port)


def find_clash(wanted: Iterable[Publication], taken: Mapping[str, Iterable[Publication]]) -> str | None:
    """Why `wanted` cannot be published next to the other pods' publications, or None."""
    for pod, publications in sorted(taken.items()):
        for have in publications:
            for want in wanted:
                if want.overlaps(have):
                    return f"host port {want.host_port}/{want.protocol} is already published by pod {pod} ({have})"
    return None


def _host_ip(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise UsageError(f"host address {text!r}: not an IPv4 address") from None
