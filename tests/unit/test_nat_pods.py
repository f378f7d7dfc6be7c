"""Published ports kept with the pod: persisted, restored, adopted, and refused on a clash."""

from __future__ import annotations

from pathlib import Path

import pytest

from overlayd.errors import UsageError
from overlayd.nat.ports import parse_publish
from overlayd.pods.records import PodRecord
from overlayd.pods.service import PodService
from overlayd.statefile import read_json
from tests.unit.test_pods_service import FakeManager, make_service, manager, service, state  # noqa: F401

WEB = (parse_publish("8080:80/tcp"), parse_publish("198.18.0.11:53:53/udp"))


def test_ports_are_stored_with_the_pod_and_come_back(service: PodService, manager: FakeManager, state: Path) -> None:
    pod = service.add("web", {}, WEB)
    service.add("plain", {})
    assert pod.to_dict()["ports"] == ["8080:80/tcp", "198.18.0.11:53:53/udp"]
    stored = {p["name"]: p for p in read_json(state)["pods"]}
    assert "ports" not in stored["plain"]  # a pod without ports is stored as before
    assert [tuple(p.publication for p in service.publications())] == [WEB]
    assert service.publishes("web") and not service.publishes("plain")
    service.close()
    again = make_service(manager, state)
    assert again.get("web").ports == WEB
    assert {p.pod_ip for p in again.publications()} == {pod.ip}
    again.close()


def test_a_clashing_host_port_is_a_usage_error_and_adds_nothing(service: PodService, manager: FakeManager) -> None:
    service.add("web", {}, WEB)
    for spec in ("8080:81/tcp", "53:53/udp"):
        with pytest.raises(UsageError, match="already published by pod web"):
            service.add("other", {}, (parse_publish(spec),))
    assert [p.name for p in service.list()] == ["web"] and set(manager.pods) == {"web"}
    service.delete("web")
    service.add("other", {}, (parse_publish("8080:81/tcp"),))  # free again


def test_an_adopted_pod_gets_its_ports_back_from_the_spare_copy(service: PodService, manager: FakeManager,
                                                                  state: Path) -> None:
    service.add("web", {}, WEB)
    service.close()
    state.unlink()  # the pod store is lost; the kernel and the spare copy are not
    again = make_service(manager, state)
    again.reconcile()
    assert again.get("web").ports == WEB
    again.close()


def test_stored_records_with_bad_ports_are_refused() -> None:
    base = {"name": "web", "ip": "10.244.3.2", "node": "n", "labels": {}, "created": "2024-05-01T12:00:00"}
    assert PodRecord.from_dict_untrusted(base).ports == ()
    for ports in ("8080", [{"host_port": 0, "pod_port": 1}], [{"host_port": 1, "pod_port": 1, "protocol": "x"}]):
        with pytest.raises(ValueError):
            PodRecord.from_dict_untrusted({**base, "ports": ports})
