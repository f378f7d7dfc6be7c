"""What a host remembers across restarts, so it can come up while etcd is away.

Two files in the state dir, each replaced atomically (statefile.write_json_atomic):

    host.json   {"subnet": "10.244.3.0/24", "vtep_mac": "02:..", "cluster_config": {...}}
                the subnet this host holds, its VTEP MAC (peers' neighbour entries stay
                valid across restarts) and the cluster config it was set up for.
    peers.json  {"peers": [{"subnet": "10.244.7.0/24", "record": {host record}, "create_revision": 41}, ...]}
                the peers last programmed into the kernel.

Files can be damaged (disk trouble, an operator's editor, a truncation), so they are
parsed like untrusted input: a bad field or entry is dropped with a reason, never fatal;
a file that is not JSON at all is set aside (statefile.set_aside) for the operator. The
daemon then knows less, and the kernel and etcd fill it in (daemon.py: _previous_subnet).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path
from typing import Any

from ipam.config import ClusterConfig
from ipam.errors import InvalidConfig
from overlayd.backend.mac import parse_mac_untrusted
from overlayd.cluster.errors import RecordError
from overlayd.cluster.keys import IPNetwork
from overlayd.cluster.records import Lease, check_subnet, parse_host_record_untrusted
from overlayd.errors import ConfigError
from overlayd.statefile import StateError, read_json, set_aside, write_json_atomic

MAX_SAVED_PEERS = 65536  # more entries than any cluster network holds subnets: the file is damaged


@dataclass(frozen=True)
class HostState:
    subnet: IPNetwork | None = None
    vtep_mac: str | None = None
    cluster_config: ClusterConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.subnet is not None:
            doc["subnet"] = str(self.subnet)
        if self.vtep_mac is not None:
            doc["vtep_mac"] = self.vtep_mac
        if self.cluster_config is not None:
            doc["cluster_config"] = self.cluster_config.to_dict()
        return doc


def host_state_from_dict_untrusted(doc: Any) -> tuple[HostState, list[str]]:
    """The usable fields of a saved host state, and why each other field was dropped."""
    if not isinstance(doc, dict):
        return HostState(), [f"host state is a {type(doc).__name__}, not an object"] if doc is not None else []
    problems: list[str] = []
    subnet = _network_or_none(doc.get("subnet"), "subnet", problems)
    vtep_mac = None
    if doc.get("vtep_mac") is not None:
        try:
            vtep_mac = parse_mac_untrusted(doc["vtep_mac"])
        except ConfigError as exc:
            problems.append(f"vtep_mac: {exc}")
    cluster_config = None
    if doc.get("cluster_config") is not None:
        try:
            cluster_config = ClusterConfig.from_dict_untrusted(doc["cluster_config"])
        except InvalidConfig as exc:
            problems.append(f"cluster_config: {exc}")
    if subnet is not None and cluster_config is not None and not cluster_config.contains_subnet(subnet):
        problems.append(f"subnet {subnet} is not a host subnet of {cluster_config.network}")
        subnet = None
    return HostState(subnet, vtep_mac, cluster_config), problems


def peers_to_dict(peers: Mapping[IPNetwork, Lease]) -> dict[str, Any]:
    return {"peers": [_peer_entry(subnet, lease) for subnet, lease in sorted(peers.items(), key=_peer_order)]}


def _peer_order(item: tuple[IPNetwork, Lease]) -> tuple[int, int]:
    return item[0].version, int(item[0].network_address)


def _peer_entry(subnet: IPNetwork, lease: Lease) -> dict[str, Any]:
    # create_revision too: of two peers sharing a VTEP MAC or key, the older claim wins (backend/peers.py).
    return {"subnet": str(subnet), "record": lease.record.to_dict(), "create_revision": lease.create_revision}


class PeerEntries:
    """peers_to_dict for a peer set saved again and again: the daemon saves it after every change,
    so with thousands of peers of which one changed, rebuilding every entry is most of the cost
    (15 of 35 ms at 5,000 peers). Leases are immutable: each entry is built once per lease object
    and kept while that lease is in the set."""

    def __init__(self) -> None:
        self._built: dict[int, tuple[Lease, IPNetwork, dict[str, Any]]] = {}  # id(lease) -> (lease, subnet, entry)

    def to_dict(self, peers: Mapping[IPNetwork, Lease]) -> dict[str, Any]:
        built: dict[int, tuple[Lease, IPNetwork, dict[str, Any]]] = {}
        entries = []
        for subnet, lease in sorted(peers.items(), key=_peer_order):
            # Keyed by identity (an int hashes faster than an address); holding the lease keeps its id unique.
            hit = self._built.get(id(lease))
            if hit is None or hit[0] is not lease or hit[1] is not subnet:
                hit = (lease, subnet, _peer_entry(subnet, lease))
            built[id(lease)] = hit
            entries.append(hit[2])
        self._built = built  # peers gone from the set are forgotten
        return {"peers": entries}


def peers_from_dict_untrusted(doc: Any, config: ClusterConfig) -> tuple[dict[IPNetwork, Lease], list[str]]:
    """The saved peers that still fit the cluster config, and why each other entry was dropped."""
    if doc is None:
        return {}, []
    entries = doc.get("peers") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or len(entries) > MAX_SAVED_PEERS:
        return {}, ["peers: expected a list of peer entries"]
    assert config.subnet_len is not None  # resolved by ClusterConfig
    peers: dict[IPNetwork, Lease] = {}
    problems: list[str] = []
    for entry in entries:
        try:
            if not isinstance(entry, dict):
                raise RecordError("entry is not an object")
            subnet = _network(entry.get("subnet"))
            check_subnet(subnet, config.network, config.subnet_len)
            # The same checks as for a record read from etcd.
            record = parse_host_record_untrusted(json.dumps(entry.get("record")).encode())
            revision = entry.get("create_revision", 0)
            if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
                raise ValueError(f"create_revision {str(revision)[:20]!r} is not a revision")
        except (RecordError, ValueError, TypeError) as exc:
            problems.append(f"peer entry {str(entry)[:80]}: {exc}")
            continue
        if subnet in peers:
            problems.append(f"peer entry for {subnet} repeated; keeping the first")
            continue
        peers[subnet] = Lease(subnet, record, create_revision=revision)
    return peers, problems


def _network(text: Any) -> IPNetwork:
    if not isinstance(text, str):
        raise ValueError(f"subnet {str(text)[:60]!r} is not a string")
    return ip_network(text)  # strict: host bits set is an error


def _network_or_none(text: Any, field: str, problems: list[str]) -> IPNetwork | None:
    if text is None:
        return None
    try:
        return _network(text)
    except ValueError as exc:
        problems.append(f"{field}: {exc}")
        return None


class StateFiles:
    """The host's state files; read problems come back as text for the caller to report."""

    def __init__(self, state_dir: Path) -> None:
        self.host_path = state_dir / "host.json"
        self.peers_path = state_dir / "peers.json"
        self._peer_entries = PeerEntries()

    def load_host(self) -> tuple[HostState, list[str]]:
        try:
            return host_state_from_dict_untrusted(read_json(self.host_path))
        except StateError as exc:
            return HostState(), [_set_aside(exc)]

    def save_host(self, state: HostState) -> None:
        write_json_atomic(self.host_path, state.to_dict())

    def load_peers(self, config: ClusterConfig) -> tuple[dict[IPNetwork, Lease], list[str]]:
        try:
            return peers_from_dict_untrusted(read_json(self.peers_path), config)
        except StateError as exc:
            return {}, [_set_aside(exc)]

    def save_peers(self, peers: Mapping[IPNetwork, Lease]) -> None:
        write_json_atomic(self.peers_path, self._peer_entries.to_dict(peers))


def _set_aside(exc: StateError) -> str:
    """Move an unreadable state file aside; the text says where it went."""
    aside = set_aside(exc.path)
    return f"{exc} (kept as {aside})" if aside else str(exc)
