"""AddressPool: reserved addresses, idempotence, round robin, exhaustion, persisted state."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipam.errors import InvalidState, OutOfAddresses, SubnetMismatch
from ipam.pool import AddressPool

V4 = ip_network("10.244.3.0/29")  # .0 network, .1 gateway, .2-.6 pods, .7 broadcast
V6 = ip_network("fd00:10:244:3::/125")  # ::0 subnet-router anycast, ::1 gateway, ::2-::7 pods


def test_gateway_is_the_first_address() -> None:
    assert AddressPool(V4).gateway == IPv4Address("10.244.3.1")
    assert AddressPool(V6).gateway == IPv6Address("fd00:10:244:3::1")


@pytest.mark.parametrize(
    ("subnet", "expected"),
    [
        (V4, [f"10.244.3.{i}" for i in range(2, 7)]),
        (V6, [f"fd00:10:244:3::{i}" for i in range(2, 8)]),
    ],
)
def test_fills_every_pod_address_and_never_reserved_ones(subnet, expected: list[str]) -> None:
    pool = AddressPool(subnet)
    assert pool.capacity == len(expected)
    got = [pool.allocate(f"pod{i}") for i in range(len(expected))]
    assert got == [ip_address(e) for e in expected]
    with pytest.raises(OutOfAddresses) as info:
        pool.allocate("one-too-many")
    assert info.value.capacity == len(expected)
    assert str(subnet) in str(info.value)


def test_allocate_is_idempotent_per_owner() -> None:
    pool = AddressPool(V4)
    first = pool.allocate("a")
    pool.allocate("b")
    assert pool.allocate("a") == first
    assert pool.lookup("a") == first
    assert len(pool.allocations) == 2


def test_released_address_is_not_reused_while_others_are_free() -> None:
    pool = AddressPool(V4)
    a = pool.allocate("a")
    b = pool.allocate("b")
    assert pool.release("a") == a
    assert pool.lookup("a") is None
    assert pool.release("a") is None
    c = pool.allocate("c")
    assert c not in (a, b)
    assert c == IPv4Address("10.244.3.4")


def test_round_robin_continues_after_the_last_allocated_and_wraps() -> None:
    pool = AddressPool(V4)
    for owner in "abcde":
        pool.allocate(owner)  # .2 .. .6, cursor on .6
    pool.release("b")  # .3
    pool.release("d")  # .5
    assert pool.allocate("f") == IPv4Address("10.244.3.3")  # wraps past .6 to the first free
    assert pool.allocate("g") == IPv4Address("10.244.3.5")  # continues after .3, not from the start


def test_allocations_map_owners_to_addresses_in_address_order() -> None:
    pool = AddressPool(V4)
    for owner in "zyx":
        pool.allocate(owner)
    assert pool.allocations == {
        "z": IPv4Address("10.244.3.2"),
        "y": IPv4Address("10.244.3.3"),
        "x": IPv4Address("10.244.3.4"),
    }
    pool.allocations["w"] = IPv4Address("10.244.3.5")  # a copy: the pool is unaffected
    assert pool.lookup("w") is None


@pytest.mark.parametrize("subnet", [V4, V6, ip_network("fd00::/64")])
def test_restart_from_persisted_state_keeps_allocations_and_cursor(subnet) -> None:
    pool = AddressPool(subnet)
    for owner in "abc":
        pool.allocate(owner)
    pool.release("c")
    saved = json.loads(json.dumps(pool.to_dict()))  # what a state file would give back
    restarted = AddressPool(subnet, state=saved)
    assert restarted.allocations == pool.allocations
    assert restarted.to_dict() == pool.to_dict()
    assert restarted.allocate("d") == pool.allocate("d")  # same round-robin position
    assert restarted.allocate("a") == pool.lookup("a")


def test_large_ipv6_subnet_allocates_without_scanning_it() -> None:
    pool = AddressPool(ip_network("2001:db8:0:7::/64"))
    addresses = [pool.allocate(f"pod{i}") for i in range(1000)]
    assert len(set(addresses)) == 1000
    assert addresses[0] == IPv6Address("2001:db8:0:7::2")
    assert pool.capacity == 2**64 - 2  # IPv6 has no broadcast: only ::0 and ::1 are held back


def test_subnet_without_room_for_pods_is_refused() -> None:
    with pytest.raises(ValueError, match="no room"):
        AddressPool(ip_network("10.0.0.0/31"))


@pytest.mark.parametrize("owner", ["", None, 5])
def test_owner_must_be_a_non_empty_string(owner) -> None:
    with pytest.raises(ValueError, match="owner"):
        AddressPool(V4).allocate(owner)


def _state(**changes) -> dict:
    allocations = {"a": "10.244.3.2", "b": "10.244.3.3"}
    state = {"version": 1, "subnet": str(V4), "last": "10.244.3.3", "allocations": allocations}
    state.update(changes)
    return state


@pytest.mark.parametrize(
    ("state", "words"),
    [
        ([], "JSON object"),
        (_state(extra=1), "unknown fields 'extra'"),
        (_state(version=2), "version is 2"),
        (_state(version=True), "version is True"),
        ({"subnet": str(V4)}, "version is None"),
        (_state(subnet=7), "CIDR string"),
        (_state(subnet="10.244.3.1/29"), "host bits"),
        (_state(allocations=["a"]), "allocations must be a JSON object"),
        (_state(allocations={"": "10.244.3.2"}), "invalid owner ''"),
        (_state(allocations={"a": 167969538}), "must be an address string"),
        (_state(allocations={"a": "nope"}), "not an IP address"),
        (_state(allocations={"a": "10.244.4.2"}), "not a pod address of 10.244.3.0/29"),
        (_state(allocations={"a": "10.244.3.0"}), "not a pod address"),  # network
        (_state(allocations={"a": "10.244.3.1"}), "not a pod address"),  # gateway
        (_state(allocations={"a": "10.244.3.7"}), "not a pod address"),  # broadcast
        (_state(allocations={"a": "fd00::2"}), "not a pod address"),
        (_state(allocations={"a": "10.244.3.2", "b": "10.244.3.2"}), "gives 10.244.3.2 to both 'a' and 'b'"),
        (_state(last="10.244.3.1"), "last 10.244.3.1 is not a pod address"),
        (_state(last=3), "last must be an address string"),
    ],
)
def test_invalid_state_is_refused_clearly(state, words: str) -> None:
    with pytest.raises(InvalidState) as info:
        AddressPool(V4, state=state)
    assert words in str(info.value)


def test_ipv6_state_checks_the_anycast_and_scope() -> None:
    base = {"version": 1, "subnet": str(V6), "last": None}
    for bad in ("fd00:10:244:3::", "fd00:10:244:3::1", "fd00:10:244:3::2%eth0"):
        with pytest.raises(InvalidState):
            AddressPool(V6, state={**base, "allocations": {"a": bad}})
    pool = AddressPool(V6, state={**base, "allocations": {"a": "fd00:10:244:3::7"}})
    assert pool.allocate("b") == IPv6Address("fd00:10:244:3::2")


def test_state_of_another_subnet_is_a_distinct_error() -> None:
    with pytest.raises(SubnetMismatch) as info:
        AddressPool(ip_network("10.244.4.0/29"), state=_state())
    assert info.value.state_subnet == str(V4)
    assert "10.244.4.0/29" in str(info.value)


_ops = st.lists(st.tuples(st.sampled_from(["allocate", "release"]), st.sampled_from("abcdefgh")), max_size=60)


@given(ops=_ops, v6=st.booleans())
def test_pool_matches_a_host_local_model(ops: list[tuple[str, str]], v6: bool) -> None:
    """Reference model: scan cyclically from just after the last allocated address."""
    subnet = V6 if v6 else V4
    reserved = {subnet.network_address, subnet.network_address + 1}
    if not v6:
        reserved.add(subnet.broadcast_address)  # IPv6 has no broadcast
    usable = [a for a in subnet if a not in reserved]
    pool = AddressPool(subnet)
    model: dict[str, object] = {}
    last = -1
    for op, owner in ops:
        if op == "release":
            assert pool.release(owner) == model.pop(owner, None)
            continue
        if owner in model:
            assert pool.allocate(owner) == model[owner]
            continue
        order = usable[last + 1 :] + usable[: last + 1]
        free = [a for a in order if a not in model.values()]
        if not free:
            with pytest.raises(OutOfAddresses):
                pool.allocate(owner)
            continue
        model[owner] = free[0]
        last = usable.index(free[0])
        assert pool.allocate(owner) == free[0]
        # a restart at any point changes nothing
        pool = AddressPool(subnet, state=json.loads(json.dumps(pool.to_dict())))
    assert pool.allocations == model
