"""Two records with one tunnel identity (issue 7, item 8): the older record keeps it."""

from __future__ import annotations

import base64
from ipaddress import ip_address, ip_network

import pytest

from overlayd.backend.peers import PeerVtep, oldest_claimant, screen_peers
from overlayd.backend.wireguard import WgPeer
from overlayd.cluster.etcd import KeyValue
from overlayd.cluster.keys import KeyLayout
from overlayd.cluster.records import HostRecord
from overlayd.cluster.store import lease_from_kv
from ipam.config import ClusterConfig

OWN_SUBNET = ip_network("10.244.9.0/24")
MAC = "02:00:00:00:00:01"
KEY = bytes([1]) * 32


def vtep(host: int, revision: int, mac: str = MAC) -> PeerVtep:
    return PeerVtep(ip_address(f"198.18.0.{host}"), mac, create_revision=revision)


def screen(peers: dict) -> tuple[set, dict]:
    result = screen_peers(peers, own_subnet=OWN_SUBNET, own_ip=ip_address("198.18.0.9"), own_identity="02:00:00:00:00:09")
    return set(result.accepted), {r.subnet: r.reason for r in result.refused}


def test_oldest_claimant_is_the_lowest_revision_and_a_tie_has_none() -> None:
    assert oldest_claimant({"a": 7, "b": 3, "c": 5}) == "b"
    assert oldest_claimant({"a": 0, "b": 0}) is None
    assert oldest_claimant({"a": 4}) == "a"


@pytest.mark.parametrize("original_first", [True, False])
def test_a_clone_sharing_a_vtep_mac_is_refused_and_the_original_kept(original_first: bool) -> None:
    original, clone = (ip_network("10.244.1.0/24"), vtep(11, 5)), (ip_network("10.244.7.0/24"), vtep(99, 40))
    peers = dict([original, clone] if original_first else [clone, original])
    peers[ip_network("10.244.2.0/24")] = vtep(12, 6, "02:00:00:00:00:02")
    accepted, refused = screen(peers)
    assert accepted == {ip_network("10.244.1.0/24"), ip_network("10.244.2.0/24")}
    assert list(refused) == [ip_network("10.244.7.0/24")]
    assert "belongs to host 198.18.0.11, whose record is older" in refused[ip_network("10.244.7.0/24")]


def test_a_host_claims_its_mac_from_its_oldest_record() -> None:
    # The original holds two subnets, one re-created recently; its first record is still the oldest.
    peers = {ip_network("10.244.1.0/24"): vtep(11, 5), ip_network("10.244.3.0/24"): vtep(11, 90),
             ip_network("10.244.7.0/24"): vtep(99, 40)}
    accepted, refused = screen(peers)
    assert accepted == {ip_network("10.244.1.0/24"), ip_network("10.244.3.0/24")}
    assert list(refused) == [ip_network("10.244.7.0/24")]


def test_a_tie_of_unknown_age_refuses_every_claimant() -> None:
    peers = {ip_network("10.244.1.0/24"): vtep(11, 0), ip_network("10.244.7.0/24"): vtep(99, 0)}
    accepted, refused = screen(peers)
    assert accepted == set()
    assert all("none with an older record" in reason for reason in refused.values()) and len(refused) == 2


def test_a_record_with_our_own_vtep_mac_is_refused_however_old() -> None:
    accepted, refused = screen({ip_network("10.244.1.0/24"): vtep(11, 1, "02:00:00:00:00:09")})
    assert accepted == set() and "is our own" in refused[ip_network("10.244.1.0/24")]


def screen_wg(peers: dict, own_key: bytes) -> tuple[dict, list[str]]:
    result = screen_peers(peers, own_subnet=OWN_SUBNET, own_ip=ip_address("198.18.0.9"), own_identity=own_key,
                          identity_name="WireGuard public key")
    return dict(result.accepted), [f"{r.subnet}: {r.reason}" for r in result.refused]


def wg(host: int, revision: int, key: bytes = KEY) -> WgPeer:
    return WgPeer(public_key=key, endpoint_ip=ip_address(f"198.18.0.{host}"), port=51820, create_revision=revision)


def test_a_clone_sharing_a_public_key_is_refused_and_the_original_kept() -> None:
    peers = {ip_network("10.244.7.0/24"): wg(99, 40), ip_network("10.244.1.0/24"): wg(11, 5),
             ip_network("10.244.2.0/24"): wg(12, 6, bytes([2]) * 32)}
    accepted, refused = screen_wg(peers, own_key=bytes([9]) * 32)
    assert set(accepted) == {ip_network("10.244.1.0/24"), ip_network("10.244.2.0/24")}
    assert len(refused) == 1 and refused[0].startswith("10.244.7.0/24: WireGuard public key ")
    assert "belongs to host 198.18.0.11, whose record is older" in refused[0]


def test_public_key_ties_and_our_own_key_are_refused() -> None:
    tie = {ip_network("10.244.1.0/24"): wg(11, 0), ip_network("10.244.7.0/24"): wg(99, 0)}
    accepted, refused = screen_wg(tie, own_key=bytes([9]) * 32)
    assert accepted == {} and len(refused) == 2
    accepted, refused = screen_wg({ip_network("10.244.1.0/24"): wg(11, 1)}, own_key=KEY)
    assert accepted == {} and "is our own" in refused[0]


def test_record_data_carries_the_create_revision() -> None:
    backend = {"type": "vxlan", "vtep_mac": MAC}
    assert PeerVtep.from_backend_data_untrusted(ip_address("198.18.0.11"), backend, 17).create_revision == 17
    key = base64.b64encode(KEY).decode()
    wg_backend = {"type": "wireguard", "public_key": key, "port": "51820"}
    assert WgPeer.from_backend_data_untrusted(ip_address("198.18.0.11"), wg_backend, 18).create_revision == 18


def test_a_lease_read_from_etcd_carries_the_keys_create_revision() -> None:
    layout = KeyLayout("/overlayd/network")
    subnet = ip_network("10.244.1.0/24")
    record = HostRecord("h1", ip_address("198.18.0.11"), {"type": "vxlan", "vtep_mac": MAC})
    kv = KeyValue(layout.subnet_key(subnet).encode(), record.to_json(), create_revision=12, mod_revision=30,
                  lease_id=5)
    lease = lease_from_kv(layout, ClusterConfig(network=ip_network("10.244.0.0/16"), subnet_len=24), kv)
    assert (lease.subnet, lease.record, lease.create_revision, lease.mod_revision) == (subnet, record, 12, 30)
