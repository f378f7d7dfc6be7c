"""The host's saved state: round trips, damaged files and entries (never fatal)."""

from __future__ import annotations

import json
import os
from ipaddress import ip_address, ip_network
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipam.config import BackendConfig, ClusterConfig
from overlayd.cluster.records import HostRecord, Lease
from overlayd.hoststate import (
    HostState,
    PeerEntries,
    StateFiles,
    host_state_from_dict_untrusted,
    peers_from_dict_untrusted,
    peers_to_dict,
)

CONFIG = ClusterConfig(network=ip_network("10.244.0.0/16"), subnet_len=24)
WG = ClusterConfig(network=ip_network("10.250.0.0/16"), subnet_len=24, backend=BackendConfig("wireguard"))


def peer(subnet: str, node: str, host: int) -> Lease:
    backend = {"type": "vxlan", "vtep_mac": f"02:00:00:00:00:{host:02x}"}
    record = HostRecord(node, ip_address(f"198.18.0.{host}"), backend)
    return Lease(ip_network(subnet), record, lease_id=7, mod_revision=9)


PEERS = {p.subnet: p for p in (peer("10.244.2.0/24", "h2", 12), peer("10.244.1.0/24", "h1", 11))}


def test_host_state_round_trip(tmp_path: Path) -> None:
    files = StateFiles(tmp_path)
    state = HostState(ip_network("10.244.3.0/24"), "02:aa:bb:cc:dd:ee", CONFIG)
    files.save_host(state)
    assert files.load_host() == (state, [])
    assert os.stat(files.host_path).st_mode & 0o777 == 0o600


def test_older_host_state_without_cluster_config_still_loads(tmp_path: Path) -> None:
    (tmp_path / "host.json").write_text('{"subnet": "10.244.3.0/24", "vtep_mac": "02:aa:bb:cc:dd:ee"}')
    state, problems = StateFiles(tmp_path).load_host()
    assert state == HostState(ip_network("10.244.3.0/24"), "02:aa:bb:cc:dd:ee", None) and problems == []


def test_missing_files_mean_a_first_start(tmp_path: Path) -> None:
    files = StateFiles(tmp_path)
    assert files.load_host() == (HostState(), [])
    assert files.load_peers(CONFIG) == ({}, [])


def test_corrupt_files_are_reported_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "host.json").write_text("{not json")
    (tmp_path / "peers.json").write_bytes(b"\xff\xfe")
    files = StateFiles(tmp_path)
    state, problems = files.load_host()
    assert state == HostState() and "host.json" in problems[0]
    peers, problems = files.load_peers(CONFIG)
    assert peers == {} and "peers.json" in problems[0]
    # Set aside for the operator, not overwritten by the next save.
    assert sorted(p.name.split(".damaged-")[0] for p in tmp_path.glob("*.damaged-*")) == ["host.json", "peers.json"]
    assert not (tmp_path / "host.json").exists()


def test_saved_peers_keep_their_create_revision(tmp_path: Path) -> None:
    """Of two peers sharing a VTEP MAC the older claim wins, also when running on saved peers."""
    files = StateFiles(tmp_path)
    saved = {s: replace(lease, create_revision=7 + i) for i, (s, lease) in enumerate(PEERS.items())}
    files.save_peers(saved)
    loaded, problems = files.load_peers(CONFIG)
    assert problems == [] and {s: lease.create_revision for s, lease in loaded.items()} == {
        s: lease.create_revision for s, lease in saved.items()}


@pytest.mark.parametrize("doc, dropped", [
    ({"subnet": "10.244.3.1/24"}, "subnet"),  # host bits set
    ({"subnet": 42}, "subnet"),
    ({"vtep_mac": "01:00:5e:00:00:01"}, "vtep_mac"),  # multicast
    ({"cluster_config": {"network": "10.0.0.0/33"}}, "cluster_config"),
    ({"subnet": "10.9.0.0/24", "cluster_config": CONFIG.to_dict()}, "subnet"),  # outside the network
])
def test_bad_fields_are_dropped_with_a_reason(doc: dict, dropped: str) -> None:
    state, problems = host_state_from_dict_untrusted(doc)
    assert getattr(state, dropped) is None
    assert len(problems) == 1 and dropped in problems[0]


def test_peers_round_trip_keeps_records_only(tmp_path: Path) -> None:
    files = StateFiles(tmp_path)
    files.save_peers(PEERS)
    loaded, problems = files.load_peers(CONFIG)
    assert problems == []
    assert {s: lease.record for s, lease in loaded.items()} == {s: lease.record for s, lease in PEERS.items()}
    doc = json.loads(files.peers_path.read_text())
    assert [p["subnet"] for p in doc["peers"]] == ["10.244.1.0/24", "10.244.2.0/24"]  # stable order


subnets = st.sampled_from([f"10.244.{i}.0/24" for i in range(1, 6)])
peer_sets = st.dictionaries(subnets, st.tuples(st.sampled_from(["h1", "h2"]), st.integers(11, 13)), max_size=5)


@given(st.lists(peer_sets, min_size=1, max_size=6))
def test_saving_a_changing_peer_set_again_and_again_writes_what_peers_to_dict_says(sets: list) -> None:
    """PeerEntries reuses the entries of unchanged leases; every document must still be exact."""
    entries = PeerEntries()
    current: dict = {}
    for wanted in sets:
        # Unchanged peers keep their lease object (as the watch does); others get a new one.
        fresh = {}
        for text, (node, host) in wanted.items():
            lease = current.get(ip_network(text))
            if lease is None or (lease.record.node, int(lease.record.public_ip.packed[3])) != (node, host):
                lease = peer(text, node, host)
            fresh[lease.subnet] = lease
        current = fresh
        assert entries.to_dict(current) == peers_to_dict(current)


def test_peer_entries_forget_peers_that_left() -> None:
    entries = PeerEntries()
    entries.to_dict(PEERS)
    (kept, _), = [(s, lease) for s, lease in PEERS.items() if str(s) == "10.244.1.0/24"]
    assert entries.to_dict({kept: PEERS[kept]}) == peers_to_dict({kept: PEERS[kept]})
    assert len(entries._built) == 1


def test_peers_that_no_longer_fit_the_cluster_are_dropped() -> None:
    loaded, problems = peers_from_dict_untrusted(peers_to_dict(PEERS), WG)
    assert loaded == {} and len(problems) == 2 and "10.250.0.0/16" in problems[0]


@pytest.mark.parametrize("entry", [
    "not an object",
    {"subnet": "10.244.7.0/24"},  # no record
    {"subnet": "10.244.7.0/25", "record": {"node": "x", "public_ip": "198.18.0.7", "backend": {"type": "vxlan"}}},
    {"subnet": "10.244.7.0/24", "record": {"node": "x", "public_ip": "0.0.0.0", "backend": {"type": "vxlan"}}},
    {"subnet": "10.244.7.0/24", "record": {"node": "x", "public_ip": "198.18.0.7",
                                           "backend": {"type": "vxlan", "vtep_mac": "ff:ff:ff:ff:ff:ff"}}},
])
def test_bad_peer_entries_are_skipped_and_the_rest_kept(entry: object) -> None:
    doc = peers_to_dict(PEERS)
    doc["peers"].insert(1, entry)
    loaded, problems = peers_from_dict_untrusted(doc, CONFIG)
    assert set(loaded) == set(PEERS) and len(problems) == 1


def test_repeated_peer_subnet_keeps_the_first() -> None:
    doc = peers_to_dict(PEERS)
    doc["peers"].append(dict(doc["peers"][0], record=dict(doc["peers"][0]["record"], node="other")))
    loaded, problems = peers_from_dict_untrusted(doc, CONFIG)
    assert loaded[ip_network("10.244.1.0/24")].record.node == "h1" and "repeated" in problems[0]


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children,
                                                                                       max_size=4),
                    max_leaves=20))
def test_any_json_document_loads_without_raising(doc: object) -> None:
    host_state_from_dict_untrusted(doc)
    peers_from_dict_untrusted(doc, CONFIG)
    peers_from_dict_untrusted({"peers": [doc]}, CONFIG)
