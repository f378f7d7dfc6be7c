"""The CNI spec as overlayd-cni needs it: versions, error codes, config and environment parsing (pure).

Everything here reads untrusted input (the runtime's stdin and environment) and
turns any problem into one CniError with the spec's code; nothing else escapes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_VERSIONS = ("1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
DEFAULT_SOCKET = "/run/overlayd/overlayd.sock"
VALID_ATTACHMENTS = "cni.dev/valid-attachments"
MAX_CONFIG_BYTES = 1 << 20

# Well-known error codes (spec section "Error"); 100+ are ours.
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_NOT_AVAILABLE = 50
ERR_REFUSED = 100  # the daemon refused the request (conflict, no free address...)
ERR_CHECK_FAILED = 101  # CHECK found the attachment not as it should be
ERR_INTERNAL = 999

# The spec's container ID and network name grammar; interface names as the kernel takes them.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_IFNAME_BAD = re.compile(r"[/:\s]")
ID_MAX = 256
IFNAME_MAX = 15


class CniError(Exception):
    """An error the plugin reports as the spec's error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


@dataclass(frozen=True)
class NetConf:
    cni_version: str
    name: str
    socket: str
    dns: Mapping[str, Any] = field(default_factory=dict)
    prev_result: Mapping[str, Any] | None = None
    valid_attachments: tuple[tuple[str, str], ...] | None = None  # GC only: (containerID, ifname)


@dataclass(frozen=True)
class Env:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""


def peek_version(raw: bytes) -> str:
    """The config's cniVersion if it can be read at all, for the error reply; else the newest we speak."""
    try:
        version = json.loads(raw).get("cniVersion")
    except (ValueError, AttributeError, RecursionError):
        version = None
    return version if isinstance(version, str) and len(version) < 32 else SUPPORTED_VERSIONS[-1]


def parse_config_untrusted(raw: bytes, command: str) -> NetConf:
    """The network config from stdin; CniError (6, 7, 1, 2) naming the first problem."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise CniError(ERR_DECODE, f"network config larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CniError(ERR_DECODE, f"network config is not valid JSON: {exc}") from None
    except RecursionError:
        raise CniError(ERR_DECODE, "network config is nested too deeply") from None
    if not isinstance(doc, dict):
        raise CniError(ERR_DECODE, "network config must be a JSON object")
    version = doc.get("cniVersion")
    if not isinstance(version, str):
        raise CniError(ERR_INVALID_CONFIG, "network config needs \"cniVersion\" (string)")
    if command == "VERSION":
        return NetConf(cni_version=version, name="", socket=DEFAULT_SOCKET)
    if version not in SUPPORTED_VERSIONS:
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    if command in ("STATUS", "GC") and version == "1.0.0":
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"{command} needs cniVersion 1.1.0, the config says 1.0.0")
    name = doc.get("name")
    if not isinstance(name, str) or len(name) > ID_MAX or not _ID.fullmatch(name):
        raise CniError(ERR_INVALID_CONFIG, "network config needs \"name\": letters, digits, '_', '.', '-'")
    socket = doc.get("socket", DEFAULT_SOCKET)
    if not isinstance(socket, str) or not socket.startswith("/") or "\0" in socket or len(socket) > 107:
        raise CniError(ERR_INVALID_CONFIG, "\"socket\" must be an absolute path to overlayd's control socket")
    dns = doc.get("dns", {})
    if not isinstance(dns, dict):
        raise CniError(ERR_INVALID_CONFIG, "\"dns\" must be an object")
    prev = doc.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(ERR_INVALID_CONFIG, "\"prevResult\" must be an object")
    return NetConf(cni_version=version, name=name, socket=socket, dns=_dns_untrusted(dns), prev_result=prev,
                   valid_attachments=_valid_attachments_untrusted(doc) if command == "GC" else None)


def _dns_untrusted(dns: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("nameservers", "search", "options"):
        value = dns.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise CniError(ERR_INVALID_CONFIG, f"\"dns.{key}\" must be a list of strings")
        out[key] = value
    domain = dns.get("domain")
    if domain is not None:
        if not isinstance(domain, str):
            raise CniError(ERR_INVALID_CONFIG, "\"dns.domain\" must be a string")
        out["domain"] = domain
    return out


def _valid_attachments_untrusted(doc: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    items = doc.get(VALID_ATTACHMENTS, [])
    if not isinstance(items, list):
        raise CniError(ERR_INVALID_CONFIG, f"\"{VALID_ATTACHMENTS}\" must be a list")
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str) \
                or not isinstance(item.get("ifname"), str):
            raise CniError(ERR_INVALID_CONFIG,
                           f"each of \"{VALID_ATTACHMENTS}\" needs \"containerID\" and \"ifname\" (strings)")
        out.append((item["containerID"], item["ifname"]))
    return tuple(out)


def parse_env(environ: Mapping[str, str]) -> Env:
    """CNI_COMMAND and, for the commands that need them, the container's ID, netns and interface."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(ERR_INVALID_ENV, f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    if command not in ("ADD", "DEL", "CHECK"):
        return Env(command=command)
    container_id = environ.get("CNI_CONTAINERID", "")
    check_container_id(container_id)
    ifname = environ.get("CNI_IFNAME", "")
    check_ifname(ifname)
    netns = environ.get("CNI_NETNS", "")
    if command != "DEL" and not netns:
        raise CniError(ERR_INVALID_ENV, "CNI_NETNS is required")
    if netns and (not netns.startswith("/") or "\0" in netns or len(netns) > 4096):
        raise CniError(ERR_INVALID_ENV, f"CNI_NETNS {netns[:80]!r} must be an absolute path")
    if command != "DEL" and not environ.get("CNI_PATH"):
        raise CniError(ERR_INVALID_ENV, "CNI_PATH is required")
    return Env(command=command, container_id=container_id, netns=netns, ifname=ifname)


def check_container_id(container_id: object) -> None:
    if not isinstance(container_id, str) or len(container_id) > ID_MAX or not _ID.fullmatch(container_id):
        raise CniError(ERR_INVALID_ENV, "CNI_CONTAINERID must be 1..256 of letters, digits, '_', '.', '-', "
                                        "starting with a letter or digit")


def check_ifname(ifname: object) -> None:
    if not isinstance(ifname, str) or not 0 < len(ifname) <= IFNAME_MAX or ifname in (".", "..") \
            or _IFNAME_BAD.search(ifname) or not ifname.isascii():
        raise CniError(ERR_INVALID_ENV, f"CNI_IFNAME {str(ifname)[:40]!r} is not a valid interface name "
                                        f"(1..{IFNAME_MAX} characters, no '/', ':' or spaces)")


def build_result(cni_version: str, attachment: Mapping[str, Any], dns: Mapping[str, Any]) -> dict[str, Any]:
    """The ADD result from what the daemon answered: host veth first, then the container's interface."""
    return {
        "cniVersion": cni_version,
        "interfaces": [
            {"name": attachment["host_veth"], "mac": attachment["host_mac"]},
            {"name": attachment["ifname"], "mac": attachment["container_mac"], "sandbox": attachment["netns"]},
        ],
        "ips": [{"address": f"{attachment['ip']}/{attachment['prefixlen']}", "gateway": attachment["gateway"],
                 "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0" if ":" not in attachment["gateway"] else "::/0",
                    "gw": attachment["gateway"]}],
        "dns": dict(dns),
    }


def prev_result_address(prev: Mapping[str, Any] | None, ifname: str) -> str | None:
    """The address prevResult gives the interface `ifname` (for CHECK), None if it names none."""
    if not prev:
        return None
    interfaces = prev.get("interfaces")
    ips = prev.get("ips")
    if not isinstance(interfaces, list) or not isinstance(ips, list):
        return None
    for ip in ips:
        index = ip.get("interface") if isinstance(ip, dict) else None
        if isinstance(index, int) and 0 <= index < len(interfaces) and isinstance(interfaces[index], dict) \
                and interfaces[index].get("name") == ifname and isinstance(ip.get("address"), str):
            return ip["address"]
    return None
