"""PodService logic against an in-memory stand-in for the kernel (PodManager)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from datetime import datetime, timezone
from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path

import pytest

from overlayd.errors import ConfigError, ConflictError, KernelError, NotFoundError, UsageError
from overlayd.pods.config import PodNamespaces, PodNetworkConfig, pod_paths
from overlayd.pods.service import PodService
from overlayd.pods.store import PodStore
from overlayd.statefile import StateError, read_json

SUBNET = ip_network("10.244.3.0/29")  # pod addresses .2 - .6
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


class FakeManager:
    """Keeps "kernel" pods in dicts; can be told to fail."""

    def __init__(self, config: PodNetworkConfig) -> None:
        self.config = config
        self.pods: dict[str, IPv4Address] = {}
        self.half_made: set[str] = set()  # files of pods that exist() does not count
        self.links: set[str] = set()
        self.fail_create = False
        self.fail_before_files = False
        self.ensured: list[tuple[str, IPv4Address]] = []
        self.files_made_calls = 0
        self.closed = False
        self.meta: dict[str, object] = {}  # the spare copies beside each pod's namespaces

    def paths(self, name: str) -> PodNamespaces:
        return pod_paths(self.config, name)

    def close(self) -> None:
        self.closed = True

    def create(self, name: str, ip: IPv4Address, *, files_made: Callable[[], object] | None = None) -> PodNamespaces:
        if self.fail_before_files:
            raise KernelError("mkdir: boom")
        if files_made is not None:
            files_made()
            self.files_made_calls += 1
        if self.fail_create:
            raise KernelError("veth: boom")
        self.pods[name] = ip
        self.links.add(self.paths(name).host_veth)
        return self.paths(name)

    def address(self, name: str) -> IPv4Address | None:
        return self.pods[name]

    def write_meta(self, name: str, meta: dict[str, object]) -> None:
        self.meta[name] = meta

    def read_meta(self, name: str) -> object | None:
        return self.meta.get(name)

    def delete(self, name: str) -> None:
        self.meta.pop(name, None)
        self.pods.pop(name, None)
        self.half_made.discard(name)
        self.links.discard(self.paths(name).host_veth)

    def exists(self, name: str) -> bool:
        return name in self.pods

    def list_kernel_pods(self) -> set[str]:
        return set(self.pods) | self.half_made

    def ensure(self, name: str, ip: IPv4Address) -> None:
        self.ensured.append((name, ip))

    def remove_stray_links(self, keep: Collection[str]) -> list[str]:
        strays = sorted(self.links - {self.paths(n).host_veth for n in keep})
        self.links -= set(strays)
        return strays


@pytest.fixture
def manager() -> FakeManager:
    return FakeManager(PodNetworkConfig(bridge="ovl0", gateway=ip_address("10.244.3.1"), prefixlen=29))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "pods.json"


@pytest.fixture
def service(manager: FakeManager, state: Path) -> Iterator[PodService]:
    svc = make_service(manager, state)
    yield svc
    svc.close()


def make_service(manager: FakeManager, state: Path, subnet=SUBNET) -> PodService:
    return PodService(manager, PodStore(state), subnet, "node1", clock=lambda: NOW)  # type: ignore[arg-type]


def stored_names(state: Path) -> list[str]:
    return [p["name"] for p in read_json(state)["pods"]]


def test_add_returns_the_pod_and_persists_it(service: PodService, manager: FakeManager, state: Path) -> None:
    info = service.add("web", {"app": "web"})
    assert info.ip == ip_address("10.244.3.2")
    assert (info.name, info.node, dict(info.labels), info.created) == ("web", "node1", {"app": "web"},
                                                                         "2024-05-01T12:00:00Z")
    assert info.netns == "ovl-web"
    assert info.to_dict()["namespaces"]["uts"] == "/run/overlayd/pods/web/uts"
    assert manager.pods == {"web": info.ip}
    assert manager.files_made_calls == 1
    assert stored_names(state) == ["web"]
    assert read_json(state)["pool"]["allocations"] == {"web": "10.244.3.2"}
    assert service.get("web") == info
    assert [p.name for p in service.list()] == ["web"]
    service.close()
    assert manager.closed


def test_adding_a_taken_name_conflicts(service: PodService, manager: FakeManager) -> None:
    service.add("web", {})
    with pytest.raises(ConflictError, match="already exists"):
        service.add("web", {})
    assert service.pool.allocations == {"web": ip_address("10.244.3.2")}


@pytest.mark.parametrize(("name", "labels"), [("Web", {}), ("web", {"-bad": "x"})])
def test_invalid_requests_change_nothing(service: PodService, manager: FakeManager, state: Path,
                                         name: str, labels: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        service.add(name, labels)
    assert not manager.pods and not service.pool.allocations and not state.exists()


def test_delete_frees_the_address(service: PodService, manager: FakeManager, state: Path) -> None:
    service.add("a", {})
    service.add("b", {})
    service.delete("a")
    assert set(manager.pods) == {"b"}
    assert stored_names(state) == ["b"]
    assert service.pool.lookup("a") is None
    with pytest.raises(NotFoundError):
        service.get("a")
    with pytest.raises(NotFoundError, match="does not exist"):
        service.delete("a")


def test_failed_kernel_setup_rolls_back(service: PodService, manager: FakeManager, state: Path) -> None:
    service.add("a", {})
    manager.fail_create = True
    with pytest.raises(KernelError, match="boom"):
        service.add("b", {})
    assert service.pool.allocations == {"a": ip_address("10.244.3.2")}
    assert stored_names(state) == ["a"]
    assert read_json(state)["pool"]["allocations"] == {"a": "10.244.3.2"}
    assert [p.name for p in service.list()] == ["a"]


def test_failure_before_the_write_ahead_touches_no_disk(service: PodService, manager: FakeManager,
                                                         state: Path) -> None:
    manager.fail_before_files = True
    with pytest.raises(KernelError, match="mkdir"):
        service.add("a", {})
    assert not state.exists() and service.pool.allocations == {}


def test_failed_save_rolls_back_the_kernel_side(manager: FakeManager, tmp_path: Path) -> None:
    svc = make_service(manager, tmp_path / "no-such-dir" / "pods.json")
    with pytest.raises(StateError):
        svc.add("a", {})
    assert manager.pods == {} and svc.pool.allocations == {} and svc.list() == []
    svc.close()


def test_running_out_of_addresses_conflicts(service: PodService) -> None:
    for i in range(5):
        service.add(f"p{i}", {})
    with pytest.raises(ConflictError, match="no free address"):
        service.add("p5", {})


def test_restart_keeps_pods_and_addresses(manager: FakeManager, state: Path) -> None:
    first = make_service(manager, state)
    a = first.add("a", {"k": "v"})
    first.add("b", {})
    first.delete("b")
    first.close()
    second = make_service(manager, state)
    assert second.get("a") == a
    # Round robin continues after the last address handed out, as before the restart.
    assert second.add("c", {}).ip == ip_address("10.244.3.4")
    second.close()


def test_reconcile_keeps_drops_and_removes(manager: FakeManager, state: Path) -> None:
    first = make_service(manager, state)
    for name in ("a", "b", "c"):
        first.add(name, {})
    first.close()
    # While the daemon was down: b's namespaces vanished, a half-made pod and a stray veth appeared.
    manager.delete("b")
    manager.half_made.add("x")
    manager.links.add("ovldeadbeef")
    second = make_service(manager, state)
    report = second.reconcile()
    assert report.kept == ["a", "c"]
    assert report.dropped == ["b"]
    assert report.removed == ["x"]
    assert report.stray_links == ["ovldeadbeef"]
    assert report.failed == {}
    assert [name for name, _ in manager.ensured] == ["a", "c"]
    assert manager.list_kernel_pods() == {"a", "c"}
    assert stored_names(state) == ["a", "c"]
    assert set(second.pool.allocations) == {"a", "c"}
    assert second.reconcile().kept == ["a", "c"]  # idempotent
    second.close()


def test_reconcile_reports_repairs_that_fail(manager: FakeManager, state: Path) -> None:
    svc = make_service(manager, state)
    svc.add("a", {})

    def broken_ensure(name: str, ip: IPv4Address) -> None:
        raise KernelError("bridge ovl0 does not exist")

    manager.ensure = broken_ensure  # type: ignore[method-assign]
    report = svc.reconcile()
    assert report.kept == ["a"] and report.failed == {"a": "bridge ovl0 does not exist"}
    svc.close()


def test_pods_of_another_subnet_are_left_running(manager: FakeManager, state: Path) -> None:
    first = make_service(manager, state)
    first.add("a", {})
    first.close()
    manager.config = PodNetworkConfig(bridge="ovl0", gateway=ip_address("10.244.9.1"), prefixlen=29)
    second = make_service(manager, state, ip_network("10.244.9.0/29"))
    assert second.list() == [] and "numbered in another subnet" in second.problems[0]
    report = second.reconcile()
    assert report.removed == [] and "not a pod address of 10.244.9.0/29" in report.untouched["a"]
    assert manager.pods == {"a": ip_address("10.244.3.2")}  # still running, its veth too
    assert manager.paths("a").host_veth in manager.links
    assert second.add("b", {}).ip == ip_address("10.244.9.2")
    second.close()


def test_renumbering_removes_the_pods_of_the_old_subnet(manager: FakeManager, state: Path) -> None:
    first = make_service(manager, state)
    first.add("a", {})
    first.close()
    manager.config = PodNetworkConfig(bridge="ovl0", gateway=ip_address("10.244.9.1"), prefixlen=29)
    second = make_service(manager, state, ip_network("10.244.9.0/29"))
    assert second.reconcile(renumbered=True).removed == ["a"]
    assert manager.pods == {}
    second.close()


def test_gateway_must_match_the_subnet(manager: FakeManager, state: Path) -> None:
    with pytest.raises(ConfigError, match="does not match"):
        make_service(manager, state, ip_network("10.244.4.0/29"))


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],  # truncated
    lambda text: "",  # emptied
    lambda text: text.replace('"10.244.3.2"', '"10.244.3.5"', 1),  # pool and pods disagree
    lambda text: "\x00" * len(text),  # zeroed
])
def test_a_damaged_store_is_set_aside_and_rebuilt_from_the_kernel(
        manager: FakeManager, state: Path, damage: Callable[[str], str]) -> None:
    first = make_service(manager, state)
    first.add("a", {"app": "web"})
    first.add("b", {})
    first.close()
    original = state.read_text()
    state.write_text(damage(original))
    second = make_service(manager, state)
    assert "set aside" in second.problems[0]
    aside = [p for p in state.parent.iterdir() if p.name.startswith("pods.json.damaged-")]
    assert [p.read_text() for p in aside] == [damage(original)]
    report = second.reconcile()
    assert report.adopted == ["a", "b"] and report.removed == [] and report.untouched == {}
    assert {p.name: (str(p.ip), dict(p.labels)) for p in second.list()} == {
        "a": ("10.244.3.2", {"app": "web"}), "b": ("10.244.3.3", {})}
    assert second.add("c", {}).ip == ip_address("10.244.3.4")  # the pool knows the adopted addresses
    second.close()
    assert stored_names(state) == ["a", "b", "c"]


def test_a_pod_whose_address_is_taken_is_left_running(manager: FakeManager, state: Path) -> None:
    svc = make_service(manager, state)
    svc.add("a", {})
    manager.pods["twin"] = ip_address("10.244.3.2")  # a's address, on a pod the store does not know
    report = svc.reconcile()
    assert report.kept == ["a"] and "already the address of 'a'" in report.untouched["twin"]
    assert "twin" in manager.pods
    svc.close()
