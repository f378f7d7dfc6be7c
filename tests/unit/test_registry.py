"""The pod and service registry (pure parts): records from etcd, the view, service rules,
the publisher's plan and the restart cache."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, ip_network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlayd.cluster.errors import RecordError
from overlayd.errors import UsageError
from overlayd.nat.ruleset import NatSpec, matches, render
from overlayd.registry import cache
from overlayd.registry.publish import PodPublisher
from overlayd.registry.records import (
    PodEntry,
    ServicePort,
    ServiceSpec,
    parse_pod_untrusted,
    parse_port_spec,
    parse_selector,
    parse_service_untrusted,
)
from overlayd.registry.view import Change, RegistryView, ServiceNat

PREFIX = "/overlayd/network"
WEB = ServiceSpec("web", IPv4Address("10.96.0.10"), {"app": "web"}, (ServicePort("tcp", 80, 8080),))


def pod_change(node: str, name: str, ip: str, labels: dict[str, str] | None = None, kind: str = "pod") -> Change:
    value = json.dumps({"name": name, "node": node, "ip": ip, "labels": labels or {}, "kind": kind}).encode()
    return Change(f"{PREFIX}/pods/{node}/{name}".encode(), value)


def service_change(spec: ServiceSpec) -> Change:
    return Change(f"{PREFIX}/services/{spec.name}".encode(), spec.to_json())


# --- records ---------------------------------------------------------------------------


def test_pod_record_round_trip_and_key_agreement() -> None:
    entry = PodEntry("web-1", "h1", IPv4Address("10.244.3.2"), {"app": "web"})
    assert parse_pod_untrusted("h1", "web-1", entry.to_json()) == entry
    with pytest.raises(RecordError, match="another pod or host"):
        parse_pod_untrusted("h2", "web-1", entry.to_json())  # moved under another host's key


@pytest.mark.parametrize("doc", [
    {"name": "web-1", "node": "h1", "ip": "10.244.3.02", "labels": {}},  # not canonical
    {"name": "web-1", "node": "h1", "ip": "10.244.3.2", "labels": {"a": 1}},
    {"name": "web-1", "node": "h1", "ip": "10.244.3.2", "labels": {"bad key!": "x"}},
    {"name": "web-1", "node": "h1", "ip": "10.244.3.2", "kind": "vm"},
    {"name": "Web_1", "node": "h1", "ip": "10.244.3.2"},
])
def test_bad_pod_records_are_refused(doc: dict) -> None:
    with pytest.raises(RecordError):
        parse_pod_untrusted("h1", doc["name"], json.dumps(doc).encode())


def test_cni_records_are_named_by_container_id() -> None:
    ok = {"name": "cni:abc123", "node": "h1", "ip": "10.244.3.9", "kind": "cni"}
    assert parse_pod_untrusted("h1", "cni:abc123", json.dumps(ok).encode()).kind == "cni"
    bad = ok | {"name": "cni:../x"}
    with pytest.raises(RecordError):
        parse_pod_untrusted("h1", "cni:../x", json.dumps(bad).encode())


def test_service_record_round_trip_and_checks() -> None:
    assert parse_service_untrusted("web", WEB.to_json()) == WEB
    doc = json.loads(WEB.to_json())
    for broken in (doc | {"vip": "fd00::1"}, doc | {"ports": []}, doc | {"name": "other"},
                   doc | {"ports": [{"port": 80, "target_port": 0, "protocol": "tcp"}]},
                   doc | {"ports": [{"port": 80, "target_port": 80, "protocol": "sctp"}]},
                   doc | {"ports": [doc["ports"][0], doc["ports"][0]]}):
        with pytest.raises(RecordError):
            parse_service_untrusted("web", json.dumps(broken).encode())


@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_anything_but_record_error(data: bytes) -> None:
    for parse in (lambda: parse_pod_untrusted("h1", "p", data), lambda: parse_service_untrusted("s", data)):
        try:
            parse()
        except RecordError:
            pass


def test_port_specs_and_selectors_from_the_cli() -> None:
    assert parse_port_spec("80") == ServicePort("tcp", 80, 80)
    assert parse_port_spec("53:5353/udp") == ServicePort("udp", 53, 5353)
    for bad in ("", "80/sctp", "0", "80:70000", "a:b", "80:"):
        with pytest.raises(UsageError):
            parse_port_spec(bad)
    assert parse_selector("app=web,tier=front") == {"app": "web", "tier": "front"}
    for bad in ("app", "=x", "app=web,,"):
        with pytest.raises(UsageError):
            parse_selector(bad)


# --- the view ----------------------------------------------------------------------------


def test_endpoints_follow_labels_and_deletions() -> None:
    view = RegistryView(PREFIX)
    view.reset(view.pods_prefix, [pod_change("h1", "web-1", "10.244.1.2", {"app": "web"}),
                                  pod_change("h2", "web-2", "10.244.2.2", {"app": "web", "x": "y"}),
                                  pod_change("h2", "db", "10.244.2.3", {"app": "db"})])
    view.reset(view.services_prefix, [service_change(WEB)])
    assert [p.name for p in view.endpoints(WEB)] == ["web-1", "web-2"]
    assert view.service_nat() == (ServiceNat("web", WEB.vip, WEB.ports[0],
                                             (IPv4Address("10.244.1.2"), IPv4Address("10.244.2.2"))),)
    assert view.apply([Change(f"{PREFIX}/pods/h1/web-1".encode(), None)])
    assert [p.name for p in view.endpoints(WEB)] == ["web-2"]
    assert not view.apply([pod_change("h2", "db", "10.244.2.3", {"app": "db"})])  # the same again: no change


def test_bad_records_are_counted_and_kept_out_then_cleared() -> None:
    view = RegistryView(PREFIX)
    key = f"{PREFIX}/pods/h1/web-1".encode()
    view.apply([Change(key, b"{not json")])
    assert not view.pods and f"{PREFIX}/pods/h1/web-1" in view.refused
    view.apply([Change(f"{PREFIX}/pods/no-slash".encode(), b"{}")])
    assert len(view.refused) == 2
    view.apply([Change(key, None)])
    assert len(view.refused) == 1
    view.reset(view.pods_prefix, [])
    assert not view.refused


def test_an_empty_selector_selects_nothing() -> None:
    assert not ServiceSpec("s", WEB.vip, {}, WEB.ports).selects({"app": "web"})


def test_dns_names_are_the_same_on_every_host() -> None:
    view = RegistryView(PREFIX)
    view.apply([pod_change("h2", "api", "10.244.2.2"), pod_change("h1", "api", "10.244.1.2"),
                pod_change("h1", "cni:abc", "10.244.1.9", kind="cni"), service_change(WEB)])
    pods, services = view.names()
    assert pods == {"api": IPv4Address("10.244.1.2")}  # first by host name; CNI ids are not names
    assert services == {"web": WEB.vip}


# --- nftables ----------------------------------------------------------------------------


def test_service_rules_render_and_match_nft_listing_order() -> None:
    rows = (ServiceNat("web", WEB.vip, ServicePort("tcp", 80, 8080), (IPv4Address("10.244.1.2"),
                                                                         IPv4Address("10.244.2.2"))),
            ServiceNat("my-db", IPv4Address("10.96.0.11"), ServicePort("udp", 53, 53), ()),
            ServiceNat("api", IPv4Address("10.96.0.12"), ServicePort("tcp", 443, 8443), (IPv4Address("10.244.1.3"),)))
    spec = NatSpec("overlayd", ip_network("10.244.0.0/16"), ip_network("10.244.1.0/24"), "ovl0", True, (), rows)
    text = render(spec)
    assert "10.96.0.10 . tcp . 80 : goto svc_web_tcp_80" in text
    assert "10.96.0.11 . udp . 53 : goto reject_service" in text
    assert "dnat ip to numgen random mod 2 map { 0 : 10.244.1.2 . 8080, 1 : 10.244.2.2 . 8080 }" in text
    assert "svc_my_db" not in text  # no endpoints: no DNAT chain, a reject instead
    # nft lists a named map's elements in hash order, wrapped: still the same table.
    ours = "elements = { 10.96.0.10 . tcp . 80 : goto svc_web_tcp_80, 10.96.0.12 . tcp . 443 : goto svc_api_tcp_443 }"
    assert ours in text
    listed = text.replace(ours, "elements = { 10.96.0.12 . tcp . 443 : goto svc_api_tcp_443,\n\t\t\t     "
                                "10.96.0.10 . tcp . 80 : goto svc_web_tcp_80 }")
    assert listed != text and matches(listed, spec)
    other = NatSpec(**{**spec.__dict__, "services": rows[:1]})
    assert not matches(render(other), spec)


# --- publisher and cache -------------------------------------------------------------------


async def _nothing() -> list[PodEntry]:
    return []


def test_publisher_writes_missing_changed_and_relet_records_and_withdraws_strays() -> None:
    view = RegistryView(PREFIX)
    view.apply([pod_change("h1", "a", "10.244.1.2"), pod_change("h1", "gone", "10.244.1.3"),
                pod_change("h2", "other", "10.244.2.2")])
    publisher = PodPublisher("h1", None, view, _nothing, lambda: 7, None)  # type: ignore[arg-type]
    a = PodEntry("a", "h1", IPv4Address("10.244.1.2"), {})
    b = PodEntry("b", "h1", IPv4Address("10.244.1.4"), {"app": "x"})
    writes, withdraw = publisher.plan([a, b], 7)
    assert writes == [a, b]  # a: not written by us under lease 7 yet
    assert withdraw == ["gone"]  # never another host's
    publisher._written = {"a": 7, "b": 7}
    view.apply([pod_change("h1", "b", "10.244.1.4", {"app": "x"})])
    assert publisher.plan([a, b], 7) == ([], ["gone"])
    assert publisher.plan([a, b], 8)[0] == [a, b]  # a new lease: everything again


def test_cache_round_trip_and_damage_is_skipped(tmp_path: Path) -> None:
    rows = (ServiceNat("web", WEB.vip, WEB.ports[0], (IPv4Address("10.244.1.2"),)),)
    cache.save(tmp_path, rows)
    assert cache.load(tmp_path) == rows
    for damage in (b"{", b"[1]", json.dumps([{"service": "x;drop", "vip": "1.2.3.4", "endpoints": []}]).encode()):
        (tmp_path / cache.FILE_NAME).write_bytes(damage)
        assert cache.load(tmp_path) == ()
