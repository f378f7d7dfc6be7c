"""Daemon configuration: a TOML file plus command-line flags, flags winning.

Every path and global name the daemon uses is here, so several daemons can run
on one machine (the lab does exactly that).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import re
import socket
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overlayd.errors import ConfigError
from overlayd.logsetup import FORMATS as LOG_FORMATS
from overlayd.logsetup import LEVELS as LOG_LEVELS
from overlayd.metrics.http import parse_listen_address
from overlayd.pods.dns import DnsConfig, dns_config_from_mapping
from overlayd.nat.ruleset import TABLE_NAME_RE as NFT_TABLE_RE
from overlayd.trust.config import TrustConfig, trust_config_from_mapping

DEFAULT_CONFIG_PATH = Path("/etc/overlayd/overlayd.toml")

# Link names are limited to 15 bytes; the longest we derive is prefix + 8 hex
# (veths) or prefix + ".vx" / ".wg", so the prefix may use at most 6.
_LINK_PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,5}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_NETNS_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_NODE_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")

# backend/wireguard.py IMPLEMENTATIONS, listed here so a config check does not load the backend.
WIREGUARD_IMPLEMENTATIONS = ("auto", "kernel", "userspace", "wireguard-go")
MAX_WG_WORKERS = 64  # overlayd-wg --workers (wireguard/cli.py MAX_WORKERS)
# Whole seconds: etcd leases have a TTL in seconds, and a TTL below 5 s cannot survive one slow renewal.
LEASE_TTL_RANGE = (5, 86400)
# Seconds per etcd request; over 5 minutes is no longer a timeout but a hang.
ETCD_TIMEOUT_MAX = 300.0
# chown(2) takes a gid_t; (gid_t)-1 means "leave unchanged", so it is no group.
_MAX_GID = 2**32 - 2


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    prefix: str = "/overlayd/network"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    timeout: float = 5.0


@dataclass(frozen=True)
class WireGuardConfig:
    # auto: the kernel module when present, else our userspace engine (userspace); or wireguard-go.
    implementation: str = "auto"
    socket_dir: Path | None = None  # UAPI sockets of the userspace engine (default /var/run/wireguard)
    workers: int = 1  # processes of the userspace engine (overlayd-wg --workers)


@dataclass(frozen=True)
class DaemonConfig:
    node_name: str
    etcd: EtcdConfig = field(default_factory=EtcdConfig)
    wireguard: WireGuardConfig = field(default_factory=WireGuardConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    public_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    public_interface: str | None = None
    netns: str | None = None  # run the whole daemon inside this named netns
    state_dir: Path = Path("/var/lib/overlayd")
    run_dir: Path = Path("/run/overlayd")
    socket_path: Path | None = None  # default: run_dir / "overlayd.sock"
    socket_group: int | None = None  # gid allowed to use the socket (mode 0660)
    netns_dir: Path = Path("/run/netns")
    etc_netns_dir: Path = Path("/etc/netns")  # pods' resolv.conf: etc_netns_dir / <netns name> / resolv.conf
    netns_prefix: str = "ovl-"
    link_prefix: str = "ovl"
    bridge_name: str = "ovl0"
    mtu: int | None = None  # default: underlay MTU minus the backend overhead
    lease_ttl: int = 60
    metrics_address: str = "127.0.0.1:9469"  # Prometheus /metrics; "" turns it off
    log_level: str = "info"  # any case in the file or flag; stored lower-case
    log_format: str = "auto"  # auto: journald's format when stderr is the journal (logsetup.py)
    ip_masq: bool = True  # masquerade pod traffic leaving the cluster network (nat/ruleset.py)
    nft_table: str = "overlayd"  # our nftables table: inet <nft_table>

    @property
    def control_socket(self) -> Path:
        return self.socket_path or self.run_dir / "overlayd.sock"

    @property
    def vxlan_device(self) -> str:
        return f"{self.link_prefix}.vx"

    @property
    def wireguard_device(self) -> str:
        return f"{self.link_prefix}.wg"

    @property
    def pod_run_dir(self) -> Path:
        return self.run_dir / "pods"


def check_etcd_endpoint(endpoint: str) -> None:
    """ConfigError unless `endpoint` is http(s)://host[:port] with a usable host and port."""
    problem = None
    if not re.match(r"^https?://[^/\s]+$", endpoint):
        problem = "expected http(s)://host:port"
    else:
        try:
            parts = urllib.parse.urlsplit(endpoint)
            parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
            if not parts.hostname:
                problem = "no host"
        except ValueError as exc:
            problem = str(exc)
    if problem:
        raise ConfigError(f"etcd endpoint {endpoint!r}: {problem}")


def _as_path(value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty path string, got {value!r}")
    return Path(value)


def _check(config: DaemonConfig) -> DaemonConfig:
    if not _NODE_RE.match(config.node_name):
        raise ConfigError(f"node_name {config.node_name!r} is not a valid host name")
    if not _LINK_PREFIX_RE.match(config.link_prefix):
        raise ConfigError(
            f"link_prefix {config.link_prefix!r}: 1-6 chars, lowercase letter first, then a-z 0-9 -"
        )
    if not _IFNAME_RE.match(config.bridge_name):
        raise ConfigError(f"bridge_name {config.bridge_name!r} is not a valid interface name")
    if config.public_interface is not None and not _IFNAME_RE.match(config.public_interface):
        raise ConfigError(f"public_interface {config.public_interface!r} is not a valid interface name")
    if not _NETNS_PREFIX_RE.match(config.netns_prefix):
        raise ConfigError(f"netns_prefix {config.netns_prefix!r} is not a valid name prefix")
    if config.mtu is not None and not 576 <= config.mtu <= 65535:
        raise ConfigError(f"mtu {config.mtu} out of range 576..65535")
    low, high = LEASE_TTL_RANGE
    if not low <= config.lease_ttl <= high:
        raise ConfigError(f"lease_ttl {config.lease_ttl} out of range {low}..{high} seconds")
    if config.socket_group is not None and not 0 <= config.socket_group <= _MAX_GID:
        raise ConfigError(f"socket_group {config.socket_group} is not a group id (0..{_MAX_GID})")
    # `not 0 < t` also catches NaN.
    if not 0 < config.etcd.timeout <= ETCD_TIMEOUT_MAX:
        raise ConfigError(f"etcd.timeout {config.etcd.timeout} out of range: more than 0, at most "
                          f"{ETCD_TIMEOUT_MAX:g} seconds")
    if not config.etcd.endpoints:
        raise ConfigError("etcd.endpoints: at least one endpoint is needed")
    for endpoint in config.etcd.endpoints:
        check_etcd_endpoint(endpoint)
    if not config.etcd.prefix.startswith("/") or config.etcd.prefix.endswith("/"):
        raise ConfigError(f"etcd.prefix {config.etcd.prefix!r}: must start with '/' and not end with '/'")
    if (config.etcd.cert_file is None) != (config.etcd.key_file is None):
        raise ConfigError("etcd.cert_file and etcd.key_file go together")
    if config.wireguard.implementation not in WIREGUARD_IMPLEMENTATIONS:
        raise ConfigError(f"wireguard.implementation {config.wireguard.implementation!r}: one of "
                          f"{', '.join(WIREGUARD_IMPLEMENTATIONS)}")
    workers = config.wireguard.workers
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WG_WORKERS:
        raise ConfigError(f"wireguard.workers {workers!r}: a whole number 1..{MAX_WG_WORKERS}")
    if config.metrics_address:
        parse_listen_address(config.metrics_address)  # ConfigError with the reason
    if not isinstance(config.ip_masq, bool):
        raise ConfigError(f"ip_masq: expected true or false, got {config.ip_masq!r}")
    if not isinstance(config.nft_table, str) or not NFT_TABLE_RE.match(config.nft_table):
        raise ConfigError(f"nft_table {config.nft_table!r}: 1-32 chars, lowercase letter first, then a-z 0-9 _")
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level {config.log_level!r}: one of {', '.join(LOG_LEVELS)}")
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format {config.log_format!r}: one of {', '.join(LOG_FORMATS)}")
    return config


_PATH_KEYS = {"state_dir", "run_dir", "socket_path", "netns_dir", "etc_netns_dir"}
_ETCD_PATH_KEYS = {"ca_file", "cert_file", "key_file"}


def _from_mapping(values: dict[str, Any]) -> DaemonConfig:
    """Build a config from a flat-ish mapping (TOML document merged with flags)."""
    values = dict(values)
    etcd_values = _table(values.pop("etcd", None), "etcd")
    wg_values = _table(values.pop("wireguard", None), "wireguard")
    unknown = set(wg_values) - {f.name for f in dataclasses.fields(WireGuardConfig)}
    if unknown:
        raise ConfigError(f"unknown [wireguard] keys: {', '.join(sorted(unknown))}")
    if "socket_dir" in wg_values:
        wg_values["socket_dir"] = _as_path(wg_values["socket_dir"], "wireguard.socket_dir")
    if not isinstance(wg_values.get("implementation", ""), str):
        raise ConfigError("wireguard.implementation: expected a string")
    trust = trust_config_from_mapping(values.pop("trust", None))
    dns = dns_config_from_mapping(values.pop("dns", None))
    known = {f.name for f in dataclasses.fields(DaemonConfig)} - {"etcd", "wireguard", "trust", "dns"}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    etcd_known = {f.name for f in dataclasses.fields(EtcdConfig)}
    unknown = set(etcd_values) - etcd_known
    if unknown:
        raise ConfigError(f"unknown [etcd] keys: {', '.join(sorted(unknown))}")

    for key in _ETCD_PATH_KEYS & etcd_values.keys():
        etcd_values[key] = _as_path(etcd_values[key], f"etcd.{key}")
    if "endpoints" in etcd_values:
        endpoints = etcd_values["endpoints"]
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
            raise ConfigError("etcd.endpoints: expected a list of URLs")
        etcd_values["endpoints"] = tuple(endpoints)
    if "timeout" in etcd_values:
        etcd_values["timeout"] = _number(etcd_values["timeout"], "etcd.timeout")
    if not isinstance(etcd_values.get("prefix", ""), str):
        raise ConfigError(f"etcd.prefix: expected a string, got {etcd_values['prefix']!r}")

    for key in _PATH_KEYS & values.keys():
        values[key] = _as_path(values[key], key)
    if values.get("public_ip") is not None:
        if not isinstance(values["public_ip"], str):  # ip_address(5) would be 0.0.0.5
            raise ConfigError(f"public_ip: expected an address string, got {values['public_ip']!r}")
        try:
            values["public_ip"] = ipaddress.ip_address(values["public_ip"])
        except ValueError as exc:
            raise ConfigError(f"public_ip: {exc}") from None
    for key in ("mtu", "lease_ttl", "socket_group"):
        if values.get(key) is not None:
            values[key] = _integer(values[key], key)
    for key in ("node_name", "netns", "public_interface", "netns_prefix", "link_prefix", "bridge_name", "log_level",
                "log_format", "metrics_address", "nft_table"):
        if values.get(key) is not None and not isinstance(values[key], str):
            raise ConfigError(f"{key}: expected a string, got {values[key]!r}")
    for key in ("log_level", "log_format"):  # "INFO" in a file is as clear as "info"
        if values.get(key) is not None:
            values[key] = values[key].lower()
    values.setdefault("node_name", socket.gethostname().split(".")[0].lower())
    return _check(DaemonConfig(etcd=EtcdConfig(**etcd_values), wireguard=WireGuardConfig(**wg_values),
                                trust=trust, dns=dns, **values))


def _table(value: Any, name: str) -> dict[str, Any]:
    """A [name] table of the TOML file (merged with flags); None when absent."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table, got {value!r}")
    return dict(value)


def _integer(value: Any, key: str) -> int:
    # Flags arrive as int already (argparse type=int); TOML gives int or float, and 30.7 is a typo, not 30.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected a whole number, got {value!r}")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    try:
        return float(value) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    except OSError as exc:  # a directory, no permission, ...
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None


def add_daemon_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags mirror the TOML keys; a flag given on the command line wins."""
    parser.add_argument("--config", type=Path, help=f"TOML config file (default {DEFAULT_CONFIG_PATH} if present)")
    parser.add_argument("--node-name", dest="node_name", help="this host's name in the cluster (default: short host name)")
    parser.add_argument("--etcd-endpoints", dest="etcd.endpoints", help="comma-separated http(s)://host:port")
    parser.add_argument("--etcd-prefix", dest="etcd.prefix", help="where the cluster's keys live (default /overlayd/network)")
    parser.add_argument("--etcd-ca", dest="etcd.ca_file", help="CA bundle that signed etcd's certificate (TLS)")
    parser.add_argument("--etcd-cert", dest="etcd.cert_file", help="client certificate for etcd (with --etcd-key)")
    parser.add_argument("--etcd-key", dest="etcd.key_file", help="client key for etcd (with --etcd-cert)")
    parser.add_argument("--wireguard-implementation", dest="wireguard.implementation",
                        choices=WIREGUARD_IMPLEMENTATIONS,
                        help="auto (kernel module if present, else overlayd-wg), kernel, userspace or wireguard-go")
    parser.add_argument("--wireguard-socket-dir", dest="wireguard.socket_dir",
                        help="UAPI socket directory of a userspace engine (default /var/run/wireguard)")
    parser.add_argument("--trust-ca", dest="trust.ca_file", help="cluster trust anchor: verify host records")
    parser.add_argument("--trust-host-key", dest="trust.host_key", help="this host's signing key (default state_dir/host.key)")
    parser.add_argument("--trust-host-cert", dest="trust.host_cert", help="this host's certificate from the cluster CA")
    parser.add_argument("--public-ip", dest="public_ip", help="the address peers reach this host at")
    parser.add_argument("--public-interface", dest="public_interface",
                        help="the interface that carries tunnel traffic (default: the default route's)")
    parser.add_argument("--netns", help="run inside this named network namespace (the lab uses it)")
    parser.add_argument("--state-dir", dest="state_dir", help="host.json, peers.json, pods.json, keys (default /var/lib/overlayd)")
    parser.add_argument("--run-dir", dest="run_dir", help="socket and pod namespace files (default /run/overlayd)")
    parser.add_argument("--socket", dest="socket_path", help="control socket (default run_dir/overlayd.sock)")
    parser.add_argument("--netns-dir", dest="netns_dir", help="where pod network namespaces are kept (default /run/netns)")
    parser.add_argument("--netns-prefix", dest="netns_prefix", help="pod netns name = prefix + pod name (default ovl-)")
    parser.add_argument("--link-prefix", dest="link_prefix", help="prefix of every link overlayd makes (default ovl)")
    parser.add_argument("--bridge", dest="bridge_name", help="the pod bridge (default ovl0)")
    parser.add_argument("--mtu", type=int, help="pod MTU (default: the underlay's less the backend's overhead)")
    parser.add_argument("--lease-ttl", dest="lease_ttl", type=int,
                        help="seconds a dead host's subnet is kept (5..86400, default 60)")
    parser.add_argument("--metrics-address", dest="metrics_address", help='HOST:PORT for /metrics, "" for none')
    parser.add_argument("--log-level", dest="log_level", help=f"{', '.join(LOG_LEVELS)} (any case)")
    parser.add_argument("--log-format", dest="log_format",
                        help="auto (journald priorities when stderr is the journal), journal or text")
    parser.add_argument("--ip-masq", dest="ip_masq", action=argparse.BooleanOptionalAction, default=None,
                        help="masquerade pod traffic leaving the cluster network (default on)")
    parser.add_argument("--nft-table", dest="nft_table", help="name of overlayd's nftables table (inet)")


def config_from_args(args: argparse.Namespace) -> DaemonConfig:
    path: Path | None = args.config
    values: dict[str, Any] = {}
    if path is not None:
        values = load_toml(path)
    elif DEFAULT_CONFIG_PATH.exists():
        values = load_toml(DEFAULT_CONFIG_PATH)
    values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for dest, value in vars(args).items():
        if dest == "config" or value is None:
            continue
        section, dot, key = dest.partition(".")
        if dot:
            values[section] = _table(values.get(section), section)
            values[section][key] = value
        else:
            values[dest] = value
    return _from_mapping(values)


def config_from_mapping(values: dict[str, Any]) -> DaemonConfig:
    """Public for tests and the lab, which build configs without a file."""
    return _from_mapping(values)
