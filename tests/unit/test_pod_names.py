"""Pod names, labels, link prefixes and derived veth names."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlayd.errors import UsageError
from overlayd.pods.names import (
    IFNAME_MAX,
    is_veth_name,
    validate_labels,
    validate_link_prefix,
    validate_pod_name,
    veth_name,
)

DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


@pytest.mark.parametrize("name", ["a", "0", "web", "web-1", "a" * 63, "1-2-3", "x9"])
def test_valid_pod_names(name: str) -> None:
    validate_pod_name(name)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        ("a" * 64, "at most 63"),
        ("Web", "lowercase"),
        ("-web", "starting and ending"),
        ("web-", "starting and ending"),
        ("we_b", "lowercase letters, digits and '-'"),
        ("we.b", "invalid"),
        ("we b", "invalid"),
        ("wéb", "invalid"),
        ("../etc", "invalid"),
        ("a/b", "invalid"),
    ],
)
def test_invalid_pod_names_say_why(name: str, problem: str) -> None:
    with pytest.raises(UsageError, match=re.escape(problem)):
        validate_pod_name(name)


def test_pod_name_must_be_a_string() -> None:
    with pytest.raises(UsageError, match="string"):
        validate_pod_name(42)  # type: ignore[arg-type]


@given(st.text(alphabet="abcz09-_.A/ ", max_size=70))
def test_pod_name_accepted_exactly_when_dns_label(name: str) -> None:
    if DNS_LABEL.fullmatch(name):
        validate_pod_name(name)
    else:
        with pytest.raises(UsageError):
            validate_pod_name(name)


@pytest.mark.parametrize(
    "labels",
    [
        {},
        {"app": "web"},
        {"app": ""},
        {"example.com/tier": "front_end.v-1"},
        {"A_b.c-D": "X"},
        {"k" * 63: "v" * 63},
        {f"k{i}": "v" for i in range(64)},
    ],
)
def test_valid_labels(labels: dict[str, str]) -> None:
    validate_labels(labels)


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        ({"": "v"}, "name part is empty"),
        ({"-app": "v"}, "the name must be"),
        ({"k" * 64: "v"}, "the name must be"),
        ({"Example.com/app": "v"}, "DNS subdomain"),
        ({"/app": "v"}, "DNS subdomain"),
        ({"a..b/app": "v"}, "DNS subdomain"),
        ({"example.com/": "v"}, "name part is empty"),
        ({"app": "v" * 64}, "must be empty or 1..63"),
        ({"app": "-v"}, "must be empty or 1..63"),
        ({"app": "a b"}, "must be empty or 1..63"),
        ({"app": 1}, "must be a string"),
        ({1: "v"}, "key must be a string"),
        ({f"k{i}": "v" for i in range(65)}, "at most 64"),
    ],
)
def test_invalid_labels_say_why(labels: dict, problem: str) -> None:
    with pytest.raises(UsageError, match=re.escape(problem)):
        validate_labels(labels)


def test_labels_must_be_a_mapping() -> None:
    with pytest.raises(UsageError, match="mapping"):
        validate_labels([("a", "b")])  # type: ignore[arg-type]


@given(st.from_regex(DNS_LABEL, fullmatch=True))
def test_veth_name_fits_ifnamsiz_and_is_recognised(name: str) -> None:
    ifname = veth_name("ovlpod1", name)
    assert len(ifname) <= IFNAME_MAX
    assert ifname.startswith("ovlpod1")
    assert is_veth_name("ovlpod1", ifname)
    assert ifname == veth_name("ovlpod1", name)  # stable across restarts


def test_veth_name_is_prefix_plus_sha256_hex() -> None:
    # sha256(b"web") = 4b5e57f6...
    assert veth_name("ovl", "web") == "ovl" + "4b5e57f6"
    assert veth_name("ovl", "web") != veth_name("ovl", "web2")


@pytest.mark.parametrize(
    ("ifname", "expected"),
    [("ovl0123abcd", True), ("ovl0", False), ("ovl0123abcdef", False), ("ovl0123ABCD", False),
     ("xyz0123abcd", False), ("ovl0123abcg", False)],
)
def test_is_veth_name(ifname: str, expected: bool) -> None:
    assert is_veth_name("ovl", ifname) is expected


@pytest.mark.parametrize("prefix", ["o", "ovl", "ovl-pod", "a1"])
def test_valid_link_prefixes(prefix: str) -> None:
    validate_link_prefix(prefix)


@pytest.mark.parametrize("prefix", ["", "ovlpod12", "1ovl", "Ovl", "ov_l", "ov.l"])
def test_invalid_link_prefixes(prefix: str) -> None:
    with pytest.raises(UsageError, match="link prefix"):
        validate_link_prefix(prefix)
