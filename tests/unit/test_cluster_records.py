import base64
import json
from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlayd.cluster.errors import RecordError
from overlayd.cluster.keys import KeyLayout
from overlayd.cluster.records import (
    MAX_RECORD_BYTES,
    HostRecord,
    Lease,
    parse_host_record_untrusted,
    parse_lease_untrusted,
)

LAYOUT = KeyLayout("/t")
NETWORK = ip_network("10.244.0.0/16")
WG_KEY = base64.b64encode(bytes(range(32))).decode()


def doc(**overrides: object) -> bytes:
    base: dict[str, object] = {
        "node": "host-1",
        "public_ip": "198.18.0.11",
        "backend": {"type": "vxlan", "vtep_mac": "02:42:c6:12:00:0b"},
    }
    base.update(overrides)
    return json.dumps(base).encode()


def lease(key: bytes, value: bytes = doc()) -> Lease:
    return parse_lease_untrusted(key, value, layout=LAYOUT, network=NETWORK, subnet_len=24, lease_id=7, mod_revision=9)


def test_valid_record_round_trip() -> None:
    record = parse_host_record_untrusted(doc())
    assert record == HostRecord("host-1", ip_address("198.18.0.11"), {"type": "vxlan", "vtep_mac": "02:42:c6:12:00:0b"})
    assert parse_host_record_untrusted(record.to_json()) == record
    assert hash(parse_host_record_untrusted(record.to_json())) == hash(record)


def test_wireguard_record() -> None:
    record = parse_host_record_untrusted(doc(backend={"type": "wireguard", "public_key": WG_KEY, "port": "51820"}))
    assert record.backend["public_key"] == WG_KEY
    assert record.backend["port"] == "51820"


def test_ipv6_public_ip() -> None:
    assert parse_host_record_untrusted(doc(public_ip="2001:db8::1")).public_ip == ip_address("2001:db8::1")


def test_unknown_top_level_fields_are_ignored() -> None:
    assert parse_host_record_untrusted(doc(future="x")).node == "host-1"


def test_backend_is_read_only() -> None:
    record = parse_host_record_untrusted(doc())
    with pytest.raises(TypeError):
        record.backend["type"] = "other"  # type: ignore[index]


def test_lease_parsed_with_metadata() -> None:
    parsed = lease(b"/t/subnets/10.244.3.0-24")
    assert parsed.subnet == ip_network("10.244.3.0/24")
    assert parsed.record.node == "host-1"
    assert (parsed.lease_id, parsed.mod_revision) == (7, 9)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"text"',
        b"null",
        b'{"node": "a", "node": "b", "public_ip": "198.18.0.1", "backend": {"type": "vxlan"}}',
        b"[" * 3000 + b"]" * 3000,
        doc(node=None),
        doc(node=5),
        doc(node=""),
        doc(node="Host_1"),
        doc(node="-host"),
        doc(node="h" * 254),
        doc(public_ip=None),
        doc(public_ip=3232235777),
        doc(public_ip="198.18.0.256"),
        doc(public_ip="198.018.0.1"),
        doc(public_ip="2001:DB8::1"),
        doc(public_ip="0.0.0.0"),
        doc(public_ip="224.0.0.1"),
        doc(public_ip="198.18.0.1/24"),
        doc(backend=None),
        doc(backend=[]),
        doc(backend={}),
        doc(backend={"vtep_mac": "02:42:c6:12:00:0b"}),
        doc(backend={"type": 1}),
        doc(backend={"type": "VXLAN"}),
        doc(backend={"type": "vxlan", "vtep_mac": "02:42:C6:12:00:0B"}),
        doc(backend={"type": "vxlan", "vtep_mac": "02:42:c6:12:00"}),
        doc(backend={"type": "vxlan", "vtep_mac": "02-42-c6-12-00-0b"}),
        doc(backend={"type": "vxlan", "vtep_mac": "01:00:5e:00:00:01"}),
        doc(backend={"type": "vxlan", "vtep_mac": "00:00:00:00:00:00"}),
        doc(backend={"type": "vxlan", "vtep_mac": 42}),
        doc(backend={"type": "wireguard", "public_key": "short"}),
        doc(backend={"type": "wireguard", "public_key": base64.b64encode(bytes(31)).decode()}),
        doc(backend={"type": "wireguard", "public_key": WG_KEY.rstrip("=")}),
        doc(backend={"type": "wireguard", "port": "0"}),
        doc(backend={"type": "wireguard", "port": "65536"}),
        doc(backend={"type": "wireguard", "port": "0051"}),
        doc(backend={"type": "wireguard", "port": 51820}),
        doc(backend={"type": "vxlan", "Bad-Key": "x"}),
        doc(backend={"type": "vxlan", "note": "x" * 257}),
        doc(backend={"type": "vxlan", "note": "tab\there"}),
        doc(backend={"type": "vxlan", **{f"f{i}": "x" for i in range(16)}}),
        doc(padding="x" * MAX_RECORD_BYTES),
    ],
)
def test_malformed_records_raise_record_error(value: bytes) -> None:
    with pytest.raises(RecordError):
        parse_host_record_untrusted(value)


@pytest.mark.parametrize(
    "key",
    [
        b"/t/subnets/10.245.0.0-24",  # outside the cluster network
        b"/t/subnets/10.244.0.0-25",  # wrong length
        b"/t/subnets/10.244.0.0-16",  # the whole network
        b"/t/subnets/fd00::-64",  # wrong family
        b"/t/subnets/10.244.3.1-24",  # host bits
        b"/t/subnets/",
        b"/t/other/10.244.3.0-24",
        b"/u/subnets/10.244.3.0-24",
    ],
)
def test_key_mismatches_raise_record_error(key: bytes) -> None:
    with pytest.raises(RecordError):
        lease(key)


def test_bad_value_error_names_the_subnet() -> None:
    with pytest.raises(RecordError, match="10.244.3.0/24"):
        lease(b"/t/subnets/10.244.3.0-24", b"{}")


def test_constructor_validates_too() -> None:
    with pytest.raises(RecordError):
        HostRecord("host-1", ip_address("198.18.0.1"), {"type": "vxlan", "vtep_mac": "ff:ff:ff:ff:ff:ff"})
    with pytest.raises(RecordError):
        HostRecord("host 1", ip_address("198.18.0.1"), {"type": "vxlan"})


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(value: bytes) -> None:
    try:
        parse_host_record_untrusted(value)
    except RecordError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "node": json_values | st.sampled_from(["h1", "host-2"]),
            "public_ip": json_values | st.sampled_from(["198.18.0.1", "::1"]),
            "backend": json_values
            | st.dictionaries(st.sampled_from(["type", "vtep_mac", "port", "public_key", "x"]), json_values),
        },
    )
)
def test_arbitrary_json_documents_never_crash(document: dict[str, object]) -> None:
    try:
        record = parse_host_record_untrusted(json.dumps(document).encode())
    except RecordError:
        return
    assert parse_host_record_untrusted(record.to_json()) == record
