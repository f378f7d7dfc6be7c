"""The cross-platform WireGuard configuration protocol (UAPI) as text: parsers and serializers.

Pure: no sockets, no device. A request is `get=1\\n\\n`, or `set=1\\n` then `key=value` lines and
a blank line; the answer to both ends in `errno=N\\n\\n` (a get lists the state first). This is
what `wg` speaks to wireguard-go over /var/run/wireguard/IFNAME.sock, so `wg show`, `wg set`,
`wg showconf` and `wg setconf` work against our engine. Keys are hex; set errors are negative
errno values, as wireguard-go sends them (wg reads `errno=-22` as EINVAL).

Unlike wireguard-go, a set request is parsed and checked whole before anything is applied.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from overlayd.wireguard.constants import KEY_SIZE
from overlayd.wireguard.errors import WireGuardError
from overlayd.wireguard.routing import Network

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
UapiEndpoint = tuple[IPAddress, int]

MAX_REQUEST_BYTES = 1 << 20
MAX_LINE_BYTES = 4096
ZERO_KEY = bytes(KEY_SIZE)

_DIGITS = re.compile(r"[0-9]+")
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


class UapiError(WireGuardError):
    """A request the protocol refuses; `errno` is the positive errno code (sent negated)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


@dataclass(frozen=True)
class PeerUpdate:
    """One `public_key=` section of a set request. None means "leave as it is"."""

    public_key: bytes
    remove: bool = False
    update_only: bool = False  # do not create the peer if it does not exist
    preshared_key: bytes | None = field(default=None, repr=False)  # ZERO_KEY removes it; a secret
    endpoint: UapiEndpoint | None = None
    persistent_keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: tuple[Network, ...] = ()


@dataclass(frozen=True)
class SetRequest:
    private_key: bytes | None = field(default=None, repr=False)  # ZERO_KEY removes it; a secret
    listen_port: int | None = None
    fwmark: int | None = None  # 0 removes it
    replace_peers: bool = False
    peers: tuple[PeerUpdate, ...] = ()


@dataclass(frozen=True)
class PeerState:
    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: UapiEndpoint | None = None
    last_handshake_ns: int = 0  # Unix time in nanoseconds; 0 is never
    rx_bytes: int = 0
    tx_bytes: int = 0
    persistent_keepalive: int = 0
    allowed_ips: tuple[Network, ...] = ()


@dataclass(frozen=True)
class DeviceState:
    """What a get returns. listen_port 0 and fwmark 0 are not sent (as wireguard-go)."""

    private_key: bytes | None = field(default=None, repr=False)
    listen_port: int = 0
    fwmark: int = 0
    peers: tuple[PeerState, ...] = field(default=())


# Values.


def _invalid(message: str) -> UapiError:
    return UapiError(errno.EINVAL, message)


def parse_key_untrusted(value: str, what: str) -> bytes:
    if not _HEX_KEY.fullmatch(value):
        raise _invalid(f"{what} must be 64 hex digits")
    return bytes.fromhex(value)


def _uint(value: str, limit: int, what: str) -> int:
    if not _DIGITS.fullmatch(value) or len(value) > 20 or int(value) > limit:
        raise _invalid(f"{what} must be an integer 0..{limit}")
    return int(value)


def _true(value: str, what: str) -> bool:
    if value != "true":
        raise _invalid(f"{what} only takes the value true")
    return True


def parse_endpoint_untrusted(value: str) -> UapiEndpoint:
    """`1.2.3.4:51820` or `[2001:db8::1]:51820` (a zone may follow a link-local address)."""
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise _invalid(f"bad endpoint {value!r}")
    else:
        host, sep, port = value.rpartition(":")
        if not sep or ":" in host:
            raise _invalid(f"bad endpoint {value!r}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise _invalid(f"bad endpoint address {host!r}") from None
    if value.startswith("[") != (ip.version == 6):
        raise _invalid(f"bad endpoint {value!r}: IPv6 addresses go in brackets")
    return ip, _uint(port, 65535, "endpoint port")


def format_endpoint(endpoint: UapiEndpoint) -> str:
    ip, port = endpoint
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def parse_allowed_ip_untrusted(value: str) -> Network:
    """`10.0.0.0/24`: the prefix length is required, host bits are cleared (as the kernel does)."""
    address, sep, length = value.partition("/")
    if not sep or "%" in address:
        raise _invalid(f"bad allowed IP {value!r}")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise _invalid(f"bad allowed IP {value!r}") from None
    bits = _uint(length, ip.max_prefixlen, "allowed IP prefix length")
    return ipaddress.ip_network(f"{ip}/{bits}", strict=False)


# Requests.


def split_lines_untrusted(text: str) -> list[tuple[str, str]]:
    """`key=value` lines up to the first blank line (which must end the text)."""
    if len(text) > MAX_REQUEST_BYTES:
        raise UapiError(errno.EMSGSIZE, "request too large")
    if text == "\n":  # no lines at all: an empty (valid) request
        return []
    body, sep, rest = text.partition("\n\n")
    if not sep or rest:
        raise UapiError(errno.EPROTO, "a request ends with one blank line")
    pairs = []
    for line in body.split("\n") if body else ():
        key, eq, value = line.partition("=")
        if not eq:
            raise UapiError(errno.EPROTO, f"line without '=': {line[:64]!r}")
        pairs.append((key, value))
    return pairs


def parse_set_untrusted(body: str) -> SetRequest:
    """The lines after `set=1\\n`, through the blank line."""
    device: dict[str, object] = {}
    peers: list[PeerUpdate] = []
    peer: dict[str, object] | None = None
    allowed: list[Network] = []

    def finish_peer() -> None:
        if peer is not None:
            peers.append(PeerUpdate(**peer, allowed_ips=tuple(allowed)))  # type: ignore[arg-type]

    for key, value in split_lines_untrusted(body):
        if key == "public_key":
            finish_peer()
            peer, allowed = {"public_key": parse_key_untrusted(value, "public_key")}, []
        elif peer is None:
            if key == "private_key":
                device[key] = parse_key_untrusted(value, key)
            elif key == "listen_port":
                device[key] = _uint(value, 65535, key)
            elif key == "fwmark":
                device[key] = _uint(value, 0xFFFFFFFF, key)
            elif key == "replace_peers":
                device[key] = _true(value, key)
            else:
                raise _invalid(f"invalid UAPI device key {key[:64]!r}")
        elif key in ("remove", "update_only", "replace_allowed_ips"):
            peer[key] = _true(value, key)
        elif key == "preshared_key":
            peer[key] = parse_key_untrusted(value, key)
        elif key == "endpoint":
            peer[key] = parse_endpoint_untrusted(value)
        elif key == "persistent_keepalive_interval":
            peer["persistent_keepalive"] = _uint(value, 65535, key)
        elif key == "allowed_ip":
            allowed.append(parse_allowed_ip_untrusted(value))
        elif key == "protocol_version":
            if value != "1":
                raise _invalid(f"unsupported protocol version {value[:16]!r}")
        else:
            raise _invalid(f"invalid UAPI peer key {key[:64]!r}")
    finish_peer()
    return SetRequest(peers=tuple(peers), **device)  # type: ignore[arg-type]


def format_set(request: SetRequest) -> str:
    """The full `set=1` request, as `wg set` would send it."""
    lines = ["set=1"]
    if request.private_key is not None:
        lines.append(f"private_key={request.private_key.hex()}")
    if request.listen_port is not None:
        lines.append(f"listen_port={request.listen_port}")
    if request.fwmark is not None:
        lines.append(f"fwmark={request.fwmark}")
    if request.replace_peers:
        lines.append("replace_peers=true")
    for p in request.peers:
        lines.append(f"public_key={p.public_key.hex()}")
        if p.remove:
            lines.append("remove=true")
        if p.update_only:
            lines.append("update_only=true")
        if p.preshared_key is not None:
            lines.append(f"preshared_key={p.preshared_key.hex()}")
        if p.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(p.endpoint)}")
        if p.persistent_keepalive is not None:
            lines.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
        if p.replace_allowed_ips:
            lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={net}" for net in p.allowed_ips)
    return "\n".join(lines) + "\n\n"


# Responses.


def format_errno(code: int) -> str:
    """The status that ends every answer; `code` is a positive errno (sent negated) or 0."""
    return f"errno={-code}\n\n"


def format_get(state: DeviceState) -> str:
    """A get answer in wireguard-go's order, through `errno=0` and the blank line."""
    lines = []
    if state.private_key is not None:
        lines.append(f"private_key={state.private_key.hex()}")
    if state.listen_port:
        lines.append(f"listen_port={state.listen_port}")
    if state.fwmark:
        lines.append(f"fwmark={state.fwmark}")
    for p in state.peers:
        lines.append(f"public_key={p.public_key.hex()}")
        lines.append(f"preshared_key={(p.preshared_key or ZERO_KEY).hex()}")
        lines.append("protocol_version=1")
        if p.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(p.endpoint)}")
        seconds, nanoseconds = divmod(p.last_handshake_ns, 10**9)
        lines.append(f"last_handshake_time_sec={seconds}")
        lines.append(f"last_handshake_time_nsec={nanoseconds}")
        lines.append(f"tx_bytes={p.tx_bytes}")
        lines.append(f"rx_bytes={p.rx_bytes}")
        lines.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
        lines.extend(f"allowed_ip={net}" for net in p.allowed_ips)
    lines.append("errno=0")
    return "\n".join(lines) + "\n\n"


_PEER_COUNTERS = {
    "last_handshake_time_sec": 2**63 - 1,
    "last_handshake_time_nsec": 10**9 - 1,
    "rx_bytes": 2**64 - 1,
    "tx_bytes": 2**64 - 1,
}


def parse_get_untrusted(text: str) -> DeviceState:
    """A get answer (what a client reads); a non-zero errno raises UapiError."""
    device: dict[str, object] = {}
    peers: list[PeerState] = []
    peer: dict[str, object] | None = None
    allowed: list[Network] = []
    status: int | None = None

    def finish_peer() -> None:
        if peer is not None:
            seconds = peer.pop("last_handshake_time_sec", 0)
            nanoseconds = peer.pop("last_handshake_time_nsec", 0)
            peer["last_handshake_ns"] = int(seconds) * 10**9 + int(nanoseconds)  # type: ignore[call-overload]
            peers.append(PeerState(**peer, allowed_ips=tuple(allowed)))  # type: ignore[arg-type]

    for key, value in split_lines_untrusted(text):
        if status is not None:
            raise UapiError(errno.EPROTO, "lines after errno")
        if key == "errno":
            if not re.fullmatch(r"-?[0-9]{1,10}", value):
                raise UapiError(errno.EPROTO, f"bad errno {value[:16]!r}")
            status = abs(int(value))
        elif key == "public_key":
            finish_peer()
            peer, allowed = {"public_key": parse_key_untrusted(value, key)}, []
        elif peer is None:
            if key == "private_key":
                device[key] = parse_key_untrusted(value, key)
            elif key in ("listen_port", "fwmark"):
                device[key] = _uint(value, 65535 if key == "listen_port" else 0xFFFFFFFF, key)
        elif key == "preshared_key":
            psk = parse_key_untrusted(value, key)
            peer[key] = None if hmac.compare_digest(psk, ZERO_KEY) else psk
        elif key == "endpoint":
            peer[key] = parse_endpoint_untrusted(value)
        elif key == "persistent_keepalive_interval":
            peer["persistent_keepalive"] = _uint(value, 65535, key)
        elif key == "allowed_ip":
            allowed.append(parse_allowed_ip_untrusted(value))
        elif key in _PEER_COUNTERS:
            peer[key] = _uint(value, _PEER_COUNTERS[key], key)
        # Other keys (protocol_version, newer additions) are ignored, as `wg` does.
    finish_peer()
    if status is None:
        raise UapiError(errno.EPROTO, "answer without errno")
    if status:
        raise UapiError(status, f"device answered errno {status} ({errno.errorcode.get(status, '?')})")
    return DeviceState(peers=tuple(peers), **device)  # type: ignore[arg-type]


def parse_status_untrusted(text: str) -> None:
    """A set answer: `errno=N` and a blank line; raises UapiError for N != 0."""
    parse_get_untrusted(text)


def format_counters(counters: Mapping[str, int]) -> str:
    """Answer to overlayd's `get_counters=1`: `name=value` lines, then the status."""
    return "".join(f"{name}={value}\n" for name, value in sorted(counters.items())) + format_errno(0)


def parse_counters_untrusted(text: str) -> dict[str, int]:
    counters: dict[str, int] = {}
    status: int | None = None
    for key, value in split_lines_untrusted(text):
        if key == "errno":
            status = _uint(value.removeprefix("-"), 2**31, "errno")
        elif key.replace("_", "").isalnum():
            counters[key] = _uint(value, 2**64, key)
        else:
            raise _invalid(f"bad counter name {key[:64]!r}")
    if status is None:
        raise _invalid("counters answer without errno")
    if status:
        raise UapiError(status, "device refused get_counters")
    return counters
