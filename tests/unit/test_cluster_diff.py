from collections.abc import Mapping
from ipaddress import IPv4Network, ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlayd.cluster.diff import (
    HostAdded,
    HostChanged,
    HostEvent,
    HostRemoved,
    KeyEvent,
    LeaseDeleted,
    LeasePut,
    LeaseWatcher,
)
from overlayd.cluster.records import HostRecord, Lease


def lease(
    subnet: str, node: str = "h", ip: str = "198.18.0.10", mac: str = "02:00:00:00:00:01", lease_id: int = 1
) -> Lease:
    record = HostRecord(node, ip_address(ip), {"type": "vxlan", "vtep_mac": mac})
    return Lease(ip_network(subnet), record, lease_id=lease_id)


A = lease("10.244.1.0/24", "a", "198.18.0.11")
B = lease("10.244.2.0/24", "b", "198.18.0.12")
C = lease("10.244.3.0/24", "c", "198.18.0.13")
OWN = lease("10.244.9.0/24", "me", "198.18.0.19")


def test_initial_reset_adds_everyone_but_self_in_subnet_order() -> None:
    watcher = LeaseWatcher(own_subnet=OWN.subnet)
    assert watcher.reset([C, OWN, A, B]) == [HostAdded(A), HostAdded(B), HostAdded(C)]
    assert dict(watcher.leases) == {A.subnet: A, B.subnet: B, C.subnet: C}


def test_reset_after_missed_watch_reports_exactly_the_difference() -> None:
    watcher = LeaseWatcher()
    watcher.reset([A, B, C])
    b2 = lease("10.244.2.0/24", "b", "198.18.0.99")  # B changed its public IP while we were not watching
    d = lease("10.244.4.0/24", "d", "198.18.0.14")  # D joined
    # A vanished (its lease expired during the missed watch); C is unchanged.
    assert watcher.reset([b2, C, d]) == [HostRemoved(A), HostChanged(B, b2), HostAdded(d)]
    assert dict(watcher.leases) == {B.subnet: b2, C.subnet: C, d.subnet: d}


def test_reset_orders_removals_before_additions() -> None:
    watcher = LeaseWatcher()
    watcher.reset([lease("10.244.5.0/24", "a")])
    moved = lease("10.244.1.0/24", "a")  # host a now holds a lower subnet
    events = watcher.reset([moved])
    assert events == [HostRemoved(lease("10.244.5.0/24", "a")), HostAdded(moved)]


def test_reset_with_same_listing_is_silent() -> None:
    watcher = LeaseWatcher()
    watcher.reset([A, B])
    assert watcher.reset([B, A]) == []


def test_new_lease_id_with_same_record_is_silent_but_stored() -> None:
    watcher = LeaseWatcher()
    watcher.reset([A])
    taken_over = lease("10.244.1.0/24", "a", "198.18.0.11", lease_id=2)
    assert watcher.update([LeasePut(taken_over)]) == []
    assert watcher.leases[A.subnet].lease_id == 2
    assert watcher.reset([lease("10.244.1.0/24", "a", "198.18.0.11", lease_id=3)]) == []
    assert watcher.leases[A.subnet].lease_id == 3


def test_update_add_change_remove() -> None:
    watcher = LeaseWatcher()
    a2 = lease("10.244.1.0/24", "a", "198.18.0.11", mac="02:00:00:00:00:02")
    assert watcher.update([LeasePut(A)]) == [HostAdded(A)]
    assert watcher.update([LeasePut(a2)]) == [HostChanged(A, a2)]
    assert watcher.update([LeaseDeleted(A.subnet)]) == [HostRemoved(a2)]
    assert watcher.leases == {}


def test_update_ignores_unknown_deletions() -> None:
    watcher = LeaseWatcher()
    watcher.reset([A])
    assert watcher.update([LeaseDeleted(B.subnet)]) == []
    assert dict(watcher.leases) == {A.subnet: A}


def test_update_sequence_in_one_batch_is_applied_in_order() -> None:
    watcher = LeaseWatcher()
    events = watcher.update([LeasePut(A), LeaseDeleted(A.subnet), LeasePut(B)])
    assert events == [HostAdded(A), HostRemoved(A), HostAdded(B)]


def test_own_subnet_never_becomes_a_peer() -> None:
    watcher = LeaseWatcher(own_subnet=OWN.subnet)
    assert watcher.update([LeasePut(OWN)]) == []
    assert watcher.update([LeaseDeleted(OWN.subnet)]) == []
    assert OWN.subnet not in watcher.leases


def test_leases_view_is_read_only() -> None:
    watcher = LeaseWatcher()
    watcher.reset([A])
    with pytest.raises(TypeError):
        watcher.leases[B.subnet] = B  # type: ignore[index]


# -- properties: update and reset agree, and events replay the state change -----------

SUBNETS = [IPv4Network(f"10.244.{i}.0/24") for i in range(6)]
leases = st.builds(
    lambda s, n, ip: lease(str(s), f"n{n}", f"198.18.0.{ip}"),
    st.sampled_from(SUBNETS),
    st.integers(0, 2),
    st.integers(1, 3),
)
key_events = st.lists(st.one_of(st.builds(LeasePut, leases), st.builds(LeaseDeleted, st.sampled_from(SUBNETS))))


def replay(state: dict[IPv4Network, Lease], events: list[HostEvent]) -> dict[IPv4Network, Lease]:
    state = dict(state)
    for event in events:
        if isinstance(event, HostAdded):
            assert event.lease.subnet not in state
            state[event.lease.subnet] = event.lease
        elif isinstance(event, HostChanged):
            assert state[event.old.subnet] == event.old
            assert event.old.record != event.new.record
            state[event.new.subnet] = event.new
        else:
            assert state.pop(event.lease.subnet) == event.lease
    return state


def apply_to_model(model: dict[IPv4Network, Lease], events: list[KeyEvent]) -> None:
    for event in events:
        if isinstance(event, LeasePut):
            model[event.lease.subnet] = event.lease
        else:
            model.pop(event.subnet, None)


def records(state: Mapping[IPv4Network, Lease]) -> dict[IPv4Network, HostRecord]:
    return {subnet: l.record for subnet, l in state.items()}


@given(st.lists(leases), key_events, st.sampled_from([None, *SUBNETS]))
def test_update_matches_a_fresh_listing(
    initial: list[Lease], events: list[KeyEvent], own: IPv4Network | None
) -> None:
    """After any watch events, the watcher holds what a re-list would give, and its
    events take a consumer from the old peer set to the new one."""
    etcd = {l.subnet: l for l in initial}
    watcher = LeaseWatcher(own)
    seen = replay({}, watcher.reset(etcd.values()))
    apply_to_model(etcd, events)
    seen = replay(seen, watcher.update(events))
    expected = {s: l for s, l in etcd.items() if s != own}
    assert records(watcher.leases) == records(expected)
    assert records(seen) == records(expected)
    # A re-list of the same state changes nothing.
    assert watcher.reset(etcd.values()) == []


@given(st.lists(leases), st.lists(leases), st.sampled_from([None, *SUBNETS]))
def test_reset_events_turn_the_old_state_into_the_new(
    before: list[Lease], after: list[Lease], own: IPv4Network | None
) -> None:
    watcher = LeaseWatcher(own)
    seen = replay({}, watcher.reset(before))
    seen = replay(seen, watcher.reset(after))
    expected = {l.subnet: l for l in after if l.subnet != own}
    assert records(seen) == records(expected)
    assert dict(watcher.leases) == expected
