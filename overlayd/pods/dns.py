"""The resolv.conf a pod gets: the host's resolvers, as far as a pod can reach them (pure).

A pod has its own network namespace, so a loopback resolver of the host (systemd-resolved's
stub at 127.0.0.53, a local dnsmasq at 127.0.0.1) is the pod's own loopback there, where
nothing answers. Those are replaced by the upstreams systemd-resolved itself uses (its
/run/systemd/resolve/resolv.conf) when given, else dropped; `servers` from the daemon config
replace the host's list altogether. Search domains and options are kept. The result is
written to /etc/netns/<pod netns>/resolv.conf, which `ip netns exec` and `overlayctl pod
exec` show the pod as /etc/resolv.conf.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

from overlayd.dns.names import DEFAULT_DOMAIN, check_domain
from overlayd.errors import ConfigError

IPAddress = IPv4Address | IPv6Address
MAX_NAMESERVERS = 3  # glibc reads no more (MAXNS)


@dataclass(frozen=True)
class Resolv:
    nameservers: tuple[IPAddress, ...]
    search: tuple[str, ...]
    options: tuple[str, ...]


def parse_resolv_conf_untrusted(text: str) -> Resolv:
    """The parts of a resolv.conf a pod needs; lines that do not parse are skipped, as libc does."""
    nameservers: list[IPAddress] = []
    search: tuple[str, ...] = ()
    options: list[str] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2:
            continue
        keyword, values = fields[0], fields[1:]
        if keyword == "nameserver":
            try:
                nameservers.append(ip_address(values[0].split("%", 1)[0]))  # drop an IPv6 zone
            except ValueError:
                continue
        elif keyword in ("search", "domain"):
            search = tuple(values)  # the last one wins, as in libc
        elif keyword == "options":
            options.extend(values)
    return Resolv(tuple(nameservers), search, tuple(options))


def pod_resolv(host: str, upstream: str | None = None, servers: Sequence[IPAddress] = ()) -> tuple[str, str | None]:
    """(resolv.conf text for pods, a problem to report or None).

    host: the host's resolv.conf; upstream: systemd-resolved's list of upstream servers (when
    it exists); servers: the operator's override."""
    parsed = parse_resolv_conf_untrusted(host)
    if servers:
        chosen = list(servers)
    else:
        chosen = [ns for ns in parsed.nameservers if not ns.is_loopback]
        if any(ns.is_loopback for ns in parsed.nameservers) and upstream is not None:
            chosen += [ns for ns in parse_resolv_conf_untrusted(upstream).nameservers if not ns.is_loopback]
    unique = list(dict.fromkeys(chosen))[:MAX_NAMESERVERS]
    lines = ["# written by overlayd: the host's resolvers a pod can reach"]
    lines += [f"nameserver {ns}" for ns in unique]
    if parsed.search:
        lines.append("search " + " ".join(parsed.search))
    if parsed.options:
        lines.append("options " + " ".join(parsed.options))
    problem = None
    if not unique:
        problem = ("pods have no DNS resolver they can reach (the host's are loopback only); "
                   "set [dns] servers in the daemon config")
    return "\n".join(lines) + "\n", problem


def cluster_resolv(gateway: IPv4Address, domain: str, host_resolv: str) -> str:
    """The resolv.conf of pods when cluster DNS runs: the daemon on the pods' gateway answers
    cluster names and forwards the rest to the host's resolvers; `web` finds web.svc.<domain>
    through the search list, which keeps the host's domains after ours."""
    parsed = parse_resolv_conf_untrusted(host_resolv)
    search = [f"svc.{domain}", f"pod.{domain}", *(d for d in parsed.search if d not in (f"svc.{domain}",
                                                                                       f"pod.{domain}"))]
    lines = ["# written by overlayd: cluster DNS on the pods' gateway", f"nameserver {gateway}",
             "search " + " ".join(search[:6])]  # glibc before 2.26 reads six domains
    if parsed.options:
        lines.append("options " + " ".join(parsed.options))
    return "\n".join(lines) + "\n"


def cni_dns(resolv_text: str) -> dict[str, list[str]]:
    """The pods' resolv.conf as a CNI result's `dns` (nameservers, search, options)."""
    parsed = parse_resolv_conf_untrusted(resolv_text)
    dns = {"nameservers": [str(ns) for ns in parsed.nameservers], "search": list(parsed.search),
           "options": list(parsed.options)}
    return {key: value for key, value in dns.items() if value}


@dataclass(frozen=True)
class DnsConfig:
    """The daemon config's [dns] table."""

    resolv_conf: Path = Path("/etc/resolv.conf")  # the host's
    upstream_resolv_conf: Path = Path("/run/systemd/resolve/resolv.conf")  # systemd-resolved's upstreams
    servers: tuple[IPAddress, ...] = ()  # instead of the host's resolvers
    domain: str = DEFAULT_DOMAIN  # cluster DNS: <svc>.svc.<domain>, <pod>.pod.<domain>
    port: int = 53  # cluster DNS: UDP and TCP on the bridge gateway

    def pod_resolv(self) -> tuple[str, str | None]:
        """Read the host's files (absent ones count as empty) and build the pods' resolv.conf."""
        def read(path: Path) -> str | None:
            try:
                return path.read_text(errors="replace")
            except OSError:
                return None

        return pod_resolv(read(self.resolv_conf) or "", read(self.upstream_resolv_conf), self.servers)

    def upstreams(self) -> tuple[IPAddress, ...]:
        """Where cluster DNS forwards other names: `servers`, else the host's resolv.conf
        nameservers, loopback ones included (the daemon runs in the host's namespace)."""
        if self.servers:
            return self.servers
        try:
            text = self.resolv_conf.read_text(errors="replace")
        except OSError:
            return ()
        return parse_resolv_conf_untrusted(text).nameservers


def dns_config_from_mapping(values: Mapping[str, Any] | None) -> DnsConfig:
    """The [dns] table of the TOML file; ConfigError for anything off."""
    if values is None:
        return DnsConfig()
    if not isinstance(values, Mapping):
        raise ConfigError("[dns] must be a table")
    unknown = set(values) - {"resolv_conf", "upstream_resolv_conf", "servers", "domain", "port"}
    if unknown:
        raise ConfigError(f"unknown [dns] keys: {', '.join(sorted(map(str, unknown)))}")
    fields: dict[str, Any] = {}
    for key in ("resolv_conf", "upstream_resolv_conf"):
        if key in values:
            if not isinstance(values[key], str) or not values[key]:
                raise ConfigError(f"dns.{key}: expected a non-empty path string, got {values[key]!r}")
            fields[key] = Path(values[key])
    if "servers" in values:
        servers = values["servers"]
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
            raise ConfigError("dns.servers: expected a list of IP addresses")
        try:
            fields["servers"] = tuple(ip_address(s) for s in servers)
        except ValueError as exc:
            raise ConfigError(f"dns.servers: {exc}") from None
        loopback = [str(ns) for ns in fields["servers"] if ns.is_loopback]
        if loopback:
            raise ConfigError(f"dns.servers: {', '.join(loopback)} is loopback, which a pod cannot reach "
                              "(it is the pod's own loopback inside its namespace)")
        if len(fields["servers"]) > MAX_NAMESERVERS:
            raise ConfigError(f"dns.servers: at most {MAX_NAMESERVERS} (libc reads no more)")
    if "domain" in values:
        try:
            check_domain(values["domain"])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"dns.domain: {exc}") from None
        fields["domain"] = values["domain"]
    if "port" in values:
        port = values["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"dns.port: expected a port number 1-65535, got {port!r}")
        fields["port"] = port
    return DnsConfig(**fields)
