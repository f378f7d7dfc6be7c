"""The harnesses: each takes fuzz bytes and feeds one untrusted-input parser.

A harness catches exactly the exception types its parser documents; anything else that
escapes (another exception, or an AssertionError from an invariant) is a crash. Seeds are
genuine inputs for mutation: coverage-guided engines start from them, hypothesis mutates them.
"""

from __future__ import annotations

import errno
import io
import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import dns.message
import dns.name

from ipam.config import ClusterConfig
from ipam.errors import InvalidConfig
from overlayd.api.commands import dispatch
from overlayd.api.protocol import decode_request_untrusted
from overlayd.backend.mac import parse_mac_untrusted
from overlayd.backend.peers import PeerVtep, screen_peers
from overlayd.backend.wireguard import WgPeer
from overlayd.cluster.errors import RecordError
from overlayd.cluster.keys import KeyLayout
from overlayd.cluster.records import parse_host_record_untrusted, parse_lease_untrusted
from overlayd.dns.names import ClusterNames
from overlayd.dns.resolver import Answer, Drop, Forward, Question, Resolver
from overlayd.dns.upstream import reply_matches_untrusted
from overlayd.errors import ClusterError, ConfigError, OverlaydError, UsageError
from overlayd.wireguard import Output, TunPacket, ippacket
from overlayd.wireguard.cookie import CookieGenerator
from overlayd.wireguard.uapi import (
    DeviceState,
    SetRequest,
    UapiError,
    format_set,
    parse_get_untrusted,
    parse_set_untrusted,
)
from overlayd.wireguard.uapi_server import serve_connection
from tests.fuzz.reader import Reader
from tests.fuzz.wg_world import A_ADDR, A_IP, B_ADDR, B_IP, L_ADDR, WgWorld, ip4


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]  # raises only on a bug
    seeds: Callable[[], list[bytes]]
    max_len: int = 4096


# --- WireGuard: datagrams from the network -------------------------------------------


# A lead byte at least this picks a genuine message to edit. Most byte values do: a fuzzer
# without coverage feedback (WireGuard runs uninstrumented under atheris) makes short inputs.
_GENUINE = 0x40


def _genuine_byte(index: int, count: int) -> int:
    """The lead byte that picks genuine input `index` of `count`."""
    return (_GENUINE // count + 1) * count + index


@cache
def _wg_world() -> WgWorld:
    return WgWorld()


def _wg_seeds() -> list[bytes]:
    # Flags 0x04 = fix the MACs; a second byte >= _GENUINE picks a genuine message (index: byte % count).
    count = len(_wg_world().samples)
    genuine = [bytes([flags, _genuine_byte(index, count)]) for flags in (0x00, 0x04, 0x05, 0x06)
               for index in range(count)]
    return genuine + [b"\x00\x01" + bytes(31), b"\x03\x02" + bytes([20]) + bytes(20) + b"\x01\x01"]


def wg_datagrams(data: bytes) -> None:
    """Device.receive_datagram(s)_untrusted: never raises, never delivers a forged packet.

    Flags byte: bits 0-1 pick the receiver (B; A; the loaded device; B with a batch, which
    goes through the GRO batch path first when its datagrams have one size), bit 2
    recomputes mac1 (an attacker knows the receiver's public key), bits 3-7 advance the clock
    a little (timers run too). Then each datagram: a byte >= _GENUINE takes a genuine message
    and edits it (Reader.mutate), else the bytes as they come.
    """
    world = _wg_world()
    r = Reader(data)
    flags = r.byte()
    world.now += (flags >> 3) * 1e-4
    now = world.now
    which = flags & 3
    device, source = ((world.b, A_ADDR), (world.a, B_ADDR), (world.loaded, A_ADDR), (world.b, A_ADDR))[which]
    if which == 3:
        batch = []
        while r.pos < len(data) and len(batch) < 64:
            batch.append((_with_macs(_datagram(world, Reader(r.chunk())), device, flags), source))
        outputs = _gro_batch(device, batch, now)
        if outputs is None:
            outputs = device.receive_datagrams_untrusted(batch, now)
    else:
        outputs = device.receive_datagram_untrusted(_with_macs(_datagram(world, r), device, flags), source, now)
    world.check_outputs(outputs)
    deadline = device.get_timer()
    if deadline is not None and deadline <= now:
        device.handle_timer(now)
    world.check_outputs(list(device.datagrams_to_send(now)))


def _gro_batch(device: Any, batch: list[tuple[bytes, Any]], now: float) -> list[Output] | None:
    """receive_batch_untrusted on the batch as one GRO receive, if its sizes allow one."""
    if len(batch) < 2:
        return None
    size = len(batch[0][0])
    if any(len(d) != size for d, _ in batch[:-1]) or len(batch[-1][0]) > size:
        return None
    opened = device.receive_batch_untrusted(memoryview(b"".join(d for d, _ in batch)), size, batch[0][1], now)
    if opened is None:
        return None
    return [TunPacket(bytes(p), b"") for p in opened[0]] + list(opened[1])


def _datagram(world: WgWorld, r: Reader) -> bytes:
    head = r.byte()
    if head >= _GENUINE:
        return r.mutate(world.samples[head % len(world.samples)])
    return bytes([head]) + r.rest()


def _with_macs(message: bytes, device: Any, flags: int) -> bytes:
    if flags & 4 and len(message) in (148, 92) and message[0] in (1, 2):
        fixed = bytearray(message)
        CookieGenerator(device.public_key).add_macs(fixed, 0.0)
        return bytes(fixed)
    return message


# --- WireGuard: packets from the TUN side (pods send whatever they like) ----------------


_TUN_PACKETS = [ip4(A_IP, B_IP, b"x" * 20), ip4(A_IP, "10.0.3.7", b""), ip4(A_IP, "10.0.9.9", b"y"),
                bytes.fromhex("6000000000081140") + bytes(15) + b"\x01" + bytes(15) + b"\x02" + bytes(8)]


def _tun_seeds() -> list[bytes]:
    return [bytes([_genuine_byte(i, len(_TUN_PACKETS))]) for i in range(len(_TUN_PACKETS))] + [b"\x05" + bytes(30)]


def wg_tun_packets(data: bytes) -> None:
    """Device.send_packet(s) and the inner-header readers: never raise; only datagrams to
    configured peers come out. A first byte >= _GENUINE edits a genuine packet."""
    world = _wg_world()
    r = Reader(data)
    head = r.byte()
    packet = r.mutate(_TUN_PACKETS[head % len(_TUN_PACKETS)]) if head >= _GENUINE else bytes([head]) + r.rest()
    ippacket.destination_untrusted(packet)
    header = ippacket.source_and_length_untrusted(packet)
    if header is not None:
        source, length = header
        assert len(source) in (4, 16) and length <= len(packet)
    peers = (B_ADDR, L_ADDR)
    for out in world.a.send_packet(packet, world.now):
        assert out.addr in peers, out
    for out in world.a.send_packets([packet, packet[: len(packet) // 2]], world.now):
        assert out.addr in peers, out


# --- WireGuard: UAPI text ----------------------------------------------------------------

_UAPI_SEEDS = [
    "private_key=" + "e8" * 32 + "\nlisten_port=51820\nfwmark=0\nreplace_peers=true\n"
    "public_key=" + "b8" * 32 + "\nprotocol_version=1\npreshared_key=" + "00" * 32 +
    "\nendpoint=198.18.0.12:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\n"
    "allowed_ip=10.0.2.0/24\nallowed_ip=fd00::/64\n\n",
    "public_key=" + "c1" * 32 + "\nremove=true\npublic_key=" + "c2" * 32 +
    "\nupdate_only=true\nendpoint=[fe80::1%eth0]:1\n\n",
]
_GET_SEED = ("private_key=" + "e8" * 32 + "\nlisten_port=51820\npublic_key=" + "b8" * 32 + "\npreshared_key=" +
             "00" * 32 + "\nprotocol_version=1\nendpoint=198.18.0.12:51820\nlast_handshake_time_sec=1700000000\n"
             "last_handshake_time_nsec=5\ntx_bytes=100\nrx_bytes=200\npersistent_keepalive_interval=0\n"
             "allowed_ip=10.0.2.0/24\nerrno=0\n\n")


def _uapi_seeds() -> list[bytes]:
    return [b"\x00" + s.encode() for s in _UAPI_SEEDS] + [b"\x01" + _GET_SEED.encode(),
                                                         b"\x02set=1\n" + _UAPI_SEEDS[0].encode() + b"get=1\n\n"]


class _Stream(io.BufferedIOBase):
    """One UAPI connection: reads from the fuzz input, collects what the server writes."""

    def __init__(self, data: bytes) -> None:
        self._in = io.BytesIO(data)
        self.written = bytearray()

    def readline(self, size: int | None = -1) -> bytes:
        return self._in.readline(size)

    def read(self, size: int | None = -1) -> bytes:
        return self._in.read(size)

    def write(self, data: Any) -> int:
        self.written += data
        return len(data)


class _Target:
    def get_state(self) -> DeviceState:
        return DeviceState()

    def apply(self, request: SetRequest) -> None:
        pass


def uapi(data: bytes) -> None:
    """parse_set_untrusted / parse_get_untrusted raise only UapiError; a parsed set request
    survives format_set and parsing again; serve_connection never raises and never answers
    with the internal-error code (ENOANO, which it sends when a parser raised something else)."""
    r = Reader(data)
    mode = r.byte() % 3
    body = r.rest()
    text = body.decode("utf-8", "replace")
    if mode == 0:
        try:
            request = parse_set_untrusted(text)
        except UapiError:
            return
        again = parse_set_untrusted(format_set(request).removeprefix("set=1\n"))
        assert again == request, f"set request changed on a round trip: {request} -> {again}"
    elif mode == 1:
        try:
            parse_get_untrusted(text)
        except UapiError:
            pass
    else:
        stream = _Stream(body)
        serve_connection(stream, _Target())  # type: ignore[arg-type]
        assert f"errno=-{errno.ENOANO}\n".encode() not in stream.written, "UAPI parser raised an unexpected error"


# --- etcd: host records, lease keys, cluster config -------------------------------------

_LAYOUT = KeyLayout("/overlayd/network")
_CONFIG = ClusterConfig(network=ipaddress.ip_network("10.244.0.0/16"), subnet_len=24)
_RECORDS = [
    b'{"node":"host-1","public_ip":"198.18.0.11","backend":{"type":"vxlan","vtep_mac":"02:42:c6:12:00:0b"}}',
    b'{"node":"host-2","public_ip":"fd00::2","backend":{"type":"wireguard",'
    b'"public_key":"uLi4uLi4uLi4uLi4uLi4uLi4uLi4uLi4uLi4uLi4uLg=","port":"51820"}}',
    b'{"node":"h","public_ip":"198.18.0.12","backend":{"type":"vxlan","vtep_mac":"02:00:00:00:00:01","x":"y"},'
    b'"signature":"abc"}',
]


def _record_seeds() -> list[bytes]:
    return list(_RECORDS)


def host_record(data: bytes) -> None:
    """parse_host_record_untrusted raises only RecordError; what it accepts round-trips."""
    try:
        record = parse_host_record_untrusted(data)
    except RecordError:
        return
    assert parse_host_record_untrusted(record.to_json()) == record


def _lease_seeds() -> list[bytes]:
    keys = [b"/overlayd/network/subnets/10.244.3.0-24", b"/overlayd/network/subnets/fd00::-64",
            b"/overlayd/network/cooldown/10.244.9.0-24"]
    return [bytes([len(k)]) + k + v for k in keys for v in _RECORDS[:2]]


def lease(data: bytes) -> None:
    """parse_lease_untrusted and the key parsers raise only RecordError; an accepted lease's
    subnet is one of the cluster's host subnets."""
    r = Reader(data)
    key, value = r.chunk(), r.rest()
    for parse_key in (_LAYOUT.subnet_of_key_untrusted, _LAYOUT.cooling_subnet_of_key_untrusted):
        try:
            parse_key(key)
        except RecordError:
            pass
    try:
        parsed = parse_lease_untrusted(key, value, layout=_LAYOUT, network=_CONFIG.network, subnet_len=24)
    except RecordError:
        return
    assert _CONFIG.contains_subnet(parsed.subnet), parsed.subnet


def _config_seeds() -> list[bytes]:
    return [_CONFIG.to_json().encode(),
            b'{"network":"fd00:10::/48","subnet_len":64,"backend":{"type":"wireguard","port":51820,'
            b'"options":{"mtu":1380,"persistent_keepalive":25}}}',
            b'{"network":"10.0.0.0/8","backend":{"type":"vxlan","vni":42,"port":8472,"options":{"mtu":1450}}}']


def cluster_config(data: bytes) -> None:
    """ClusterConfig.from_json_untrusted raises only InvalidConfig; what it accepts round-trips."""
    try:
        config = ClusterConfig.from_json_untrusted(data)
    except InvalidConfig:
        return
    assert ClusterConfig.from_json_untrusted(config.to_json()) == config


# --- VXLAN-facing: backend data from records, MACs, peer screening ------------------------


def _vxlan_seeds() -> list[bytes]:
    return [b"\x00" + b"\x01".join(_RECORDS), b"\x01" + b'{"type":"vxlan","vtep_mac":"02:42:C6:12:00:0B "}',
            b"\x02" + b" 02:42:c6:12:00:0b", b"\x01" + b'{"type":"wireguard","public_key":"x","port":99999}']


def vxlan_peers(data: bytes) -> None:
    """What the daemon parses for VXLAN: records -> PeerVtep/WgPeer (ClusterError only),
    MACs (ConfigError only); screened peers never overlap each other or us."""
    r = Reader(data)
    mode, rest = r.byte() % 3, r.rest()
    if mode == 0:
        peers: dict[Any, PeerVtep] = {}
        for index, chunk in enumerate(rest.split(b"\x01")[:16]):
            try:
                record = parse_host_record_untrusted(chunk)
            except RecordError:
                continue
            _backend_peers(record.public_ip, record.backend)
            try:
                peer = PeerVtep.from_backend_data_untrusted(record.public_ip, record.backend)
            except ClusterError:
                continue
            # Subnets from the fuzz bytes too: lengths and places that overlap.
            size = 16 + (chunk[0] if chunk else 0) % 9
            subnet = ipaddress.ip_network(f"10.{index % 4}.{(len(chunk) * 7) % 256}.0/24").supernet(new_prefix=size)
            peers[subnet] = peer
        _screen(peers)
    elif mode == 1:
        try:
            backend = json.loads(rest)
        except (ValueError, RecursionError):
            return
        if isinstance(backend, dict):
            _backend_peers(ipaddress.ip_address("198.18.0.20"), backend)
    else:
        try:
            mac = parse_mac_untrusted(rest.decode("utf-8", "replace"))
        except ConfigError:
            return
        assert parse_mac_untrusted(mac) == mac and not int(mac[:2], 16) & 1


def _backend_peers(public_ip: Any, backend: Any) -> None:
    for parse in (PeerVtep.from_backend_data_untrusted, WgPeer.from_backend_data_untrusted):
        try:
            parse(public_ip, backend)
        except ClusterError:
            pass


_OWN_SUBNET = ipaddress.ip_network("10.1.128.0/24")
_OWN_IP = ipaddress.ip_address("198.18.0.11")
_OWN_MAC = "02:42:c6:12:00:0b"


def _screen(peers: dict[Any, PeerVtep]) -> None:
    screened = screen_peers(peers, own_subnet=_OWN_SUBNET, own_ip=_OWN_IP, own_identity=_OWN_MAC)
    accepted = list(screened.accepted.items())
    assert len(accepted) + len(screened.refused) == len(peers)
    for i, (subnet, peer) in enumerate(accepted):
        assert not subnet.overlaps(_OWN_SUBNET) and peer.public_ip != _OWN_IP and peer.vtep_mac != _OWN_MAC
        for other, _ in accepted[i + 1:]:
            assert not subnet.overlaps(other), f"accepted overlapping peers {subnet} and {other}"


# --- the control socket ---------------------------------------------------------------


class _Plane:
    """Answers at once, so a command's coroutine completes on its first step."""

    async def status(self) -> dict[str, Any]:
        return {}

    async def hosts(self) -> list[dict[str, Any]]:
        return []

    async def peers(self) -> list[dict[str, Any]]:
        return []

    async def pod_add(self, name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"name": name, "labels": labels}

    async def pod_del(self, name: str) -> None:
        return None

    async def pod_get(self, name: str) -> dict[str, Any]:
        return {"name": name}

    async def pod_list(self) -> list[dict[str, Any]]:
        return []


def _control_seeds() -> list[bytes]:
    return [b'{"cmd": "pod.add", "args": {"name": "web", "labels": {"app": "web", "tier": "front"}}}',
            b'{"cmd": "status"}', b'{"cmd": "pod.get", "args": {"name": "db-1"}}', b'{"cmd": "pod.del", "args": {}}']


def control_request(data: bytes) -> None:
    """decode_request_untrusted raises only UsageError; dispatch (arguments checked before the
    plane is called) raises only OverlaydError."""
    try:
        cmd, args = decode_request_untrusted(data)
    except UsageError:
        return
    coroutine = dispatch(_Plane(), cmd, args)
    try:
        coroutine.send(None)
    except StopIteration:
        return
    except OverlaydError:
        return
    coroutine.close()
    raise AssertionError("a command waited on something: the stub plane never blocks")


# --- cluster DNS: queries from pods, replies from upstream resolvers ---------------------


@cache
def _dns_resolver() -> Resolver:
    return Resolver(ClusterNames(pods={"pod1": ipaddress.IPv4Address("10.244.1.2")},
                                 services={"web": ipaddress.IPv4Address("10.96.0.10")}))


def _dns_seeds() -> list[bytes]:
    return [dns.message.make_query(name, rdtype, use_edns=edns).to_wire()
            for name in ("web.svc.cluster.local", "Pod1.pod.cluster.local", "x.svc.cluster.local", "example.com")
            for rdtype in ("A", "AAAA", "SOA") for edns in (-1, 0)]


def dns_query(data: bytes) -> None:
    """Resolver.resolve_untrusted never raises; what it decides is one of its three kinds."""
    assert isinstance(_dns_resolver().resolve_untrusted(data), (Answer, Drop, Forward))


def _dns_reply_seeds() -> list[bytes]:
    replies = []
    for query in _dns_seeds():
        reply = dns.message.make_response(dns.message.from_wire(query))
        reply.id = 0x1234
        replies.append(reply.to_wire())
    return replies


def dns_upstream_reply(data: bytes) -> None:
    """reply_matches_untrusted returns a message or None, never raises."""
    reply_matches_untrusted(data, 0x1234, Question(dns.name.from_text("example.com"), 1, 1))


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("wg_datagrams", wg_datagrams, _wg_seeds, max_len=1024),
    Target("wg_tun_packets", wg_tun_packets, _tun_seeds, max_len=1600),
    Target("uapi", uapi, _uapi_seeds),
    Target("host_record", host_record, _record_seeds),
    Target("lease", lease, _lease_seeds),
    Target("cluster_config", cluster_config, _config_seeds),
    Target("vxlan_peers", vxlan_peers, _vxlan_seeds),
    Target("control_request", control_request, _control_seeds),
    Target("dns_query", dns_query, _dns_seeds, max_len=1300),
    Target("dns_upstream_reply", dns_upstream_reply, _dns_reply_seeds),
)}
