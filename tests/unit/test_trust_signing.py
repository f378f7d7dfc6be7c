"""Signed host records: a verifying reader accepts only what the certified host signed."""

from __future__ import annotations

import base64
import json
from ipaddress import ip_address, ip_network
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from ipam.config import ClusterConfig
from overlayd.cluster.diff import LeaseDeleted, LeasePut
from overlayd.cluster.errors import RecordError
from overlayd.cluster.etcd import KeyValue, WatchChunk, WatchEvent
from overlayd.cluster.keys import KeyLayout
from overlayd.cluster.records import HostRecord, Lease, parse_lease_untrusted
from overlayd.cluster.watch import decode_chunk
from overlayd.errors import ConfigError
from overlayd.trust.certs import HostCertificate, TrustAnchor, issue_certificate
from overlayd.trust.errors import RecordRejected, RejectReason
from overlayd.trust.keyfiles import raw_public
from overlayd.trust.signing import RecordSigner, RecordVerifier, record_signed_bytes

CA = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
OTHER_CA = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)
KEY_1 = Ed25519PrivateKey.from_private_bytes(bytes([3]) * 32)
KEY_2 = Ed25519PrivateKey.from_private_bytes(bytes([4]) * 32)
T0 = 1_750_000_000
NOW = T0 + 3600
LAYOUT = KeyLayout("/t/network")
CONFIG = ClusterConfig(network=ip_network("10.244.0.0/16"), subnet_len=24)
SUBNET = ip_network("10.244.3.0/24")
KEY = LAYOUT.subnet_key(SUBNET)
WG = base64.b64encode(bytes(range(32))).decode()
LEASE = 77  # the etcd lease a record is written under
RECORD_1 = HostRecord("host-1", ip_address("198.18.0.11"), {"type": "wireguard", "public_key": WG, "port": "51820"})


def cert_for(node: str, key: Ed25519PrivateKey, ca: Ed25519PrivateKey = CA, days: int = 1) -> HostCertificate:
    return issue_certificate(ca, node, raw_public(key.public_key()), not_before=T0, not_after=T0 + days * 86400)


SIGNER_1 = RecordSigner(KEY_1, cert_for("host-1", KEY_1))
SIGNER_2 = RecordSigner(KEY_2, cert_for("host-2", KEY_2))


def verifier(now: float = NOW) -> RecordVerifier:
    return RecordVerifier(TrustAnchor.from_public_keys([CA.public_key()]), clock=lambda: now)


def parse(value: bytes, key: str = KEY, check: RecordVerifier | None = None, lease_id: int | None = LEASE) -> Lease:
    return parse_lease_untrusted(key.encode(), value, layout=LAYOUT, network=CONFIG.network, subnet_len=24,
                                 lease_id=lease_id, verifier=check)


def signed_doc(signer: RecordSigner = SIGNER_1, record: HostRecord = RECORD_1, key: str = KEY) -> dict[str, Any]:
    return json.loads(signer(key, record, LEASE))


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def rejected(value: bytes, key: str = KEY, now: float = NOW, lease_id: int | None = LEASE) -> RecordRejected:
    check = verifier(now)
    with pytest.raises(RecordRejected) as info:
        parse(value, key, check, lease_id)
    assert check.rejected == {info.value.reason: 1}  # counted, once, under its reason
    assert str(info.value.reason) in str(info.value)  # and the log line says why
    return info.value


# -- the good path and backward compatibility --------------------------------------------


def test_signed_record_verifies_and_equals_the_plain_record() -> None:
    check = verifier()
    lease = parse(SIGNER_1(KEY, RECORD_1, LEASE), check=check)
    assert lease.record == RECORD_1 and lease.subnet == SUBNET
    assert not check.rejected


def test_without_an_anchor_signed_and_unsigned_records_parse_as_before() -> None:
    assert parse(SIGNER_1(KEY, RECORD_1, LEASE)).record == RECORD_1
    assert parse(RECORD_1.to_json()).record == RECORD_1


def test_signed_value_layout() -> None:
    doc = signed_doc()
    assert set(doc) == {"node", "public_ip", "backend", "lease", "cert", "sig"}
    assert doc["lease"] == "4d"  # 77, in hex as etcdctl prints lease ids
    assert doc["cert"]["node"] == "host-1" and len(base64.b64decode(doc["sig"])) == 64
    assert SIGNER_1(KEY, RECORD_1, LEASE) == SIGNER_1(KEY, RECORD_1, LEASE)  # Ed25519 is deterministic
    assert record_signed_bytes(KEY, RECORD_1, LEASE).startswith(b"overlayd host record v2\n")
    assert b'"key":"/t/network/subnets/10.244.3.0-24"' in record_signed_bytes(KEY, RECORD_1, LEASE)


# -- every tamper case -------------------------------------------------------------------


def test_changed_public_ip_is_rejected() -> None:
    assert rejected(encode({**signed_doc(), "public_ip": "198.18.0.66"})).reason == RejectReason.BAD_SIGNATURE


@pytest.mark.parametrize("backend", [
    {"type": "wireguard", "public_key": base64.b64encode(bytes(32)).decode(), "port": "51820"},  # attacker's WG key
    {"type": "wireguard", "public_key": WG, "port": "51821"},
    {"type": "wireguard", "public_key": WG, "port": "51820", "extra": "x"},
    {"type": "vxlan", "vtep_mac": "02:00:00:00:00:66"},
])
def test_changed_backend_data_is_rejected(backend: dict[str, str]) -> None:
    assert rejected(encode({**signed_doc(), "backend": backend})).reason == RejectReason.BAD_SIGNATURE


def test_record_moved_to_another_subnet_is_rejected() -> None:
    other = LAYOUT.subnet_key(ip_network("10.244.4.0/24"))
    assert rejected(SIGNER_1(KEY, RECORD_1, LEASE), key=other).reason == RejectReason.BAD_SIGNATURE


def test_record_replayed_under_another_lease_is_rejected() -> None:
    # A saved record written back after the host restarted (new lease), under the new lease.
    assert rejected(SIGNER_1(KEY, RECORD_1, LEASE), lease_id=LEASE + 1).reason == RejectReason.REPLAYED
    # ... with its "lease" field edited to match: the signature no longer does.
    doc = {**signed_doc(), "lease": f"{LEASE + 1:x}"}
    assert rejected(encode(doc), lease_id=LEASE + 1).reason == RejectReason.BAD_SIGNATURE


@pytest.mark.parametrize("lease_id", [None, 0])
def test_record_on_no_lease_is_rejected(lease_id: int | None) -> None:
    assert rejected(SIGNER_1(KEY, RECORD_1, LEASE), lease_id=lease_id).reason == RejectReason.NO_LEASE


def test_record_replayed_from_another_cluster_prefix_is_rejected() -> None:
    elsewhere = KeyLayout("/other/network").subnet_key(SUBNET)
    assert rejected(SIGNER_1(elsewhere, RECORD_1, LEASE)).reason == RejectReason.BAD_SIGNATURE


def test_record_signed_with_another_nodes_cert_is_rejected() -> None:
    # host-2 (a real, certified host) signs a record that claims to be host-1.
    doc = {**RECORD_1.to_dict(), "cert": SIGNER_2.cert.to_dict(),
           "sig": base64.b64encode(KEY_2.sign(record_signed_bytes(KEY, RECORD_1, LEASE))).decode()}
    assert rejected(encode(doc)).reason == RejectReason.NODE_MISMATCH


def test_renamed_record_is_rejected() -> None:
    # host-1's record and signature, relabelled as host-2 and given host-2's certificate.
    doc = {**signed_doc(), "node": "host-2", "cert": SIGNER_2.cert.to_dict()}
    assert rejected(encode(doc)).reason == RejectReason.BAD_SIGNATURE
    doc = {**signed_doc(), "node": "host-2"}  # or keeping host-1's certificate
    assert rejected(encode(doc)).reason == RejectReason.NODE_MISMATCH


def test_expired_and_not_yet_valid_certs_are_rejected() -> None:
    value = SIGNER_1(KEY, RECORD_1, LEASE)
    assert rejected(value, now=T0 + 86400).reason == RejectReason.CERT_EXPIRED
    assert rejected(value, now=T0 - 1).reason == RejectReason.CERT_NOT_YET_VALID
    assert parse(value, check=verifier(T0)).record == RECORD_1  # not_before is inclusive


def test_cert_from_another_ca_is_rejected() -> None:
    rogue = RecordSigner(KEY_1, cert_for("host-1", KEY_1, ca=OTHER_CA))
    assert rejected(rogue(KEY, RECORD_1, LEASE)).reason == RejectReason.UNTRUSTED_CERT


def test_tampered_cert_is_rejected() -> None:
    # The attacker puts their own key into host-1's certificate and signs with it.
    attacker = Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32)
    cert = {**SIGNER_1.cert.to_dict(), "public_key": base64.b64encode(raw_public(attacker.public_key())).decode()}
    doc = {**RECORD_1.to_dict(), "cert": cert,
           "sig": base64.b64encode(attacker.sign(record_signed_bytes(KEY, RECORD_1, LEASE))).decode()}
    assert rejected(encode(doc)).reason == RejectReason.UNTRUSTED_CERT


@pytest.mark.parametrize("drop", ["cert", "sig"])
def test_unsigned_records_are_rejected(drop: str) -> None:
    doc = signed_doc()
    del doc[drop]
    assert rejected(encode(doc)).reason == RejectReason.UNSIGNED
    assert rejected(RECORD_1.to_json()).reason == RejectReason.UNSIGNED


@pytest.mark.parametrize("cert", [None, "cert", 7, [], {}, {"node": "host-1"}])
def test_garbage_certs_are_rejected(cert: object) -> None:
    assert rejected(encode({**signed_doc(), "cert": cert})).reason == RejectReason.BAD_CERT


@pytest.mark.parametrize("sig", [None, "", 5, "!" * 88, base64.b64encode(bytes(64)).decode(),
                                 base64.b64encode(bytes(65)).decode(), ["x"]])
def test_garbage_signatures_are_rejected(sig: object) -> None:
    assert rejected(encode({**signed_doc(), "sig": sig})).reason == RejectReason.BAD_SIGNATURE


def test_malformed_record_is_still_a_plain_record_error() -> None:
    check = verifier()
    with pytest.raises(RecordError) as info:
        parse(b"{not json", check=check)
    assert not isinstance(info.value, RecordRejected) and not check.rejected


@given(st.ip_addresses(v=4).filter(lambda a: str(a) != "198.18.0.11"))
def test_no_other_address_verifies(address: object) -> None:
    value = encode({**signed_doc(), "public_ip": str(address)})
    with pytest.raises(RecordError):  # malformed (e.g. multicast) or, mostly, a bad signature
        parse(value, check=verifier())


@given(st.sampled_from(["node", "public_ip", "backend", "lease", "cert", "sig"]),
       st.none() | st.integers() | st.text(max_size=60) | st.dictionaries(st.text(max_size=8), st.text(max_size=8)))
def test_any_changed_field_is_rejected(field: str, value: object) -> None:
    doc = signed_doc()
    if doc[field] == value:
        return
    with pytest.raises(RecordError):
        parse(encode({**doc, field: value}), check=verifier())


# -- the watch path ----------------------------------------------------------------------


def test_watch_decoding_drops_forged_puts_and_keeps_signed_ones() -> None:
    forged_key = LAYOUT.subnet_key(ip_network("10.244.9.0/24"))
    chunk = WatchChunk(9, (
        WatchEvent("put", KeyValue(KEY.encode(), SIGNER_1(KEY, RECORD_1, LEASE), 5, 5, 77)),
        WatchEvent("put", KeyValue(forged_key.encode(), RECORD_1.to_json(), 9, 9, 78)),
    ))
    check = verifier()
    decoded = decode_chunk(LAYOUT, CONFIG, chunk, check)
    assert [type(e) for e in decoded.events] == [LeasePut, LeaseDeleted]
    assert decoded.events[0].lease.record == RECORD_1  # type: ignore[union-attr]
    assert decoded.deleted == ()  # a forged put never makes a subnet cool down
    (reason,) = decoded.rejected
    assert "10.244.9.0/24" in reason and "unsigned" in reason
    assert check.rejected == {RejectReason.UNSIGNED: 1}
    assert list(decoded.refused) == [forged_key] and decoded.cleared == (KEY,)  # for health: what is refused now
    # Without a verifier both are leases, as before.
    assert [type(e) for e in decode_chunk(LAYOUT, CONFIG, chunk).events] == [LeasePut, LeasePut]


# -- the signer --------------------------------------------------------------------------


def test_signer_refuses_a_key_that_is_not_the_certified_one() -> None:
    with pytest.raises(ConfigError, match="does not match"):
        RecordSigner(KEY_2, SIGNER_1.cert)


def test_signer_refuses_to_sign_for_another_node() -> None:
    record_2 = HostRecord("host-2", ip_address("198.18.0.12"), {"type": "vxlan", "vtep_mac": "02:00:00:00:00:02"})
    with pytest.raises(ConfigError, match="not for node 'host-2'"):
        SIGNER_1(KEY, record_2, LEASE)


def test_signer_refuses_records_peers_would_refuse_as_too_big() -> None:
    backend = {"type": "vxlan", **{f"f{i}": "x" * 250 for i in range(15)}}
    with pytest.raises(RecordError, match="bytes"):
        SIGNER_1(KEY, HostRecord("host-1", ip_address("198.18.0.11"), backend), LEASE)


def test_signer_repr_keeps_the_key_out() -> None:
    assert "host-1" in repr(SIGNER_1) and "private" not in repr(SIGNER_1).lower()


# --- pod records (registry/) -----------------------------------------------------------------

POD_KEY = "/t/network/pods/host-1/web-1"
POD = {"name": "web-1", "node": "host-1", "ip": "10.244.3.2", "labels": {"app": "web"}, "kind": "pod"}


def test_pod_record_signed_by_its_host_verifies_and_nothing_else_does() -> None:
    value = SIGNER_1.sign_pod(POD_KEY, POD, LEASE)
    check = verifier()
    check.verify_pod_untrusted(POD_KEY, value, "host-1", LEASE)
    doc = json.loads(value)
    cases = {
        "moved to another key": (POD_KEY.replace("web-1", "web-2"), value, "host-1", LEASE),
        "replayed under another lease": (POD_KEY, value, "host-1", LEASE + 1),
        "on no lease": (POD_KEY, value, "host-1", 0),
        "claimed for another host": (POD_KEY.replace("host-1", "host-2"), value, "host-2", LEASE),
        "unsigned": (POD_KEY, json.dumps(POD).encode(), "host-1", LEASE),
        "labels changed": (POD_KEY, encode(doc | {"labels": {"app": "db"}}), "host-1", LEASE),
        "ip changed": (POD_KEY, encode(doc | {"ip": "10.244.3.3"}), "host-1", LEASE),
    }
    for what, (key, data, node, lease) in cases.items():
        with pytest.raises(RecordRejected):
            check.verify_pod_untrusted(key, data, node, lease)
            pytest.fail(what)
    with pytest.raises(ConfigError):
        SIGNER_1.sign_pod(POD_KEY, POD | {"node": "host-2"}, LEASE)  # only its own pods
