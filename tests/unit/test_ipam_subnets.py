"""choose_subnet: reuse, random choice, cooling, exhaustion, overlaps and huge spaces."""

from __future__ import annotations

import random
from ipaddress import IPv4Network, IPv6Network, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipam.config import ClusterConfig
from ipam.errors import OutOfSubnets
from ipam.subnets import choose_subnet

NET = ip_network("10.244.0.0/16")


def nets(*texts: str) -> list[IPv4Network | IPv6Network]:
    return [ip_network(t) for t in texts]


def test_previous_subnet_is_reused_when_free() -> None:
    previous = ip_network("10.244.7.0/24")
    for seed in range(20):
        chosen = choose_subnet(NET, 24, nets("10.244.1.0/24"), previous=previous, rng=random.Random(seed))
        assert chosen == previous


def test_previous_is_reused_even_while_cooling() -> None:
    previous = ip_network("10.244.7.0/24")
    chosen = choose_subnet(NET, 24, [], previous=previous, cooling=[previous], rng=random.Random(0))
    assert chosen == previous


@pytest.mark.parametrize(
    ("previous", "taken"),
    [
        ("10.244.7.0/24", ["10.244.7.0/24"]),  # another host has it now
        ("10.244.7.0/24", ["10.244.7.128/25"]),  # a stray overlapping entry
        ("10.244.7.0/24", ["10.244.6.0/23"]),
        ("10.244.7.0/25", []),  # the subnet length changed
        ("10.245.7.0/24", []),  # the network changed
        ("fd00::/24", []),  # other family
    ],
)
def test_previous_is_not_reused_when_taken_or_no_longer_valid(previous: str, taken: list[str]) -> None:
    chosen = choose_subnet(NET, 24, nets(*taken), previous=ip_network(previous), rng=random.Random(0))
    assert chosen != ip_network(previous)
    assert chosen.prefixlen == 24 and chosen.subnet_of(NET)
    assert not any(chosen.overlaps(t) for t in nets(*taken))


def test_choice_is_random_among_free_subnets_and_reproducible() -> None:
    space = ip_network("10.244.0.0/21")  # eight /24s
    taken = nets("10.244.0.0/24", "10.244.5.0/24")
    seen = {choose_subnet(space, 24, taken, rng=random.Random(seed)) for seed in range(200)}
    assert seen == set(space.subnets(new_prefix=24)) - set(taken)
    first = [choose_subnet(space, 24, taken, rng=random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1


def test_result_does_not_depend_on_the_order_of_taken() -> None:
    taken = nets(*(f"10.244.{i}.0/24" for i in range(0, 200, 3)))
    one = choose_subnet(NET, 24, taken, rng=random.Random(3))
    other = choose_subnet(NET, 24, list(reversed(taken)), rng=random.Random(3))
    assert one == other


def test_cooling_subnets_are_avoided_while_others_are_free() -> None:
    space = ip_network("10.244.0.0/22")  # four /24s
    taken = nets("10.244.0.0/24")
    cooling = nets("10.244.1.0/24", "10.244.2.0/24")
    for seed in range(50):
        assert choose_subnet(space, 24, taken, cooling=cooling, rng=random.Random(seed)) == ip_network("10.244.3.0/24")


def test_cooling_subnets_are_handed_out_when_nothing_else_is_free() -> None:
    space = ip_network("10.244.0.0/22")
    taken = nets("10.244.0.0/24", "10.244.3.0/24")
    cooling = nets("10.244.1.0/24", "10.244.2.0/24")
    seen = {choose_subnet(space, 24, taken, cooling=cooling, rng=random.Random(seed)) for seed in range(50)}
    assert seen == set(cooling)


def test_out_of_subnets_says_how_many_exist() -> None:
    space = ip_network("10.244.0.0/22")
    with pytest.raises(OutOfSubnets) as info:
        everything = list(space.subnets(new_prefix=24))
        choose_subnet(space, 24, everything, previous=everything[1], rng=random.Random(0))
    assert info.value.total == 4
    assert "all 4" in str(info.value) and "10.244.0.0/22" in str(info.value)


def test_taken_entries_of_other_lengths_block_every_candidate_they_touch() -> None:
    space = ip_network("10.244.0.0/22")
    taken = nets("10.244.0.0/23", "10.244.2.64/26", "192.168.0.0/16", "fd00::/8")
    seen = {choose_subnet(space, 24, taken, rng=random.Random(seed)) for seed in range(50)}
    assert seen == {ip_network("10.244.3.0/24")}
    with pytest.raises(OutOfSubnets):
        choose_subnet(space, 24, nets("10.0.0.0/8"), rng=random.Random(0))


def test_accepts_a_cluster_config() -> None:
    config = ClusterConfig(ip_network("fd00:1::/56"), 64)
    chosen = choose_subnet(config, taken=[], rng=random.Random(0))
    assert config.contains_subnet(chosen)
    assert choose_subnet(config, 64, [], previous=chosen, rng=random.Random(1)) == chosen
    with pytest.raises(ValueError, match="contradicts"):
        choose_subnet(config, 60, [], rng=random.Random(0))


@pytest.mark.parametrize(
    ("space", "subnet_len"),
    [("10.0.0.0/8", 24), ("fd00::/32", 64), ("2001:db8::/32", 125), ("fd00::/16", 125)],
)
def test_huge_spaces_never_enumerate_candidates(space: str, subnet_len: int) -> None:
    # 2**16 .. 2**109 candidates: only range arithmetic can answer these.
    network = ip_network(space)
    rng = random.Random(5)
    taken = [choose_subnet(network, subnet_len, [], rng=rng) for _ in range(2000)]
    chosen = choose_subnet(network, subnet_len, taken, cooling=taken[:500], rng=rng)
    assert chosen.prefixlen == subnet_len and chosen.subnet_of(network)
    assert not any(chosen.overlaps(t) for t in taken)
    with pytest.raises(OutOfSubnets) as info:
        choose_subnet(network, subnet_len, [network], rng=rng)
    assert info.value.total == 2 ** (subnet_len - network.prefixlen)


def _sibling(net: IPv4Network | IPv6Network) -> IPv4Network | IPv6Network:
    parent = net.supernet()
    left, right = parent.subnets()
    return right if net == left else left


@pytest.mark.parametrize(("space", "hole"), [("fd00::/16", "fd00:1234:5678:9abc::/64"), ("10.0.0.0/8", "10.77.3.0/24")])
def test_single_free_subnet_in_a_huge_full_space_is_found(space: str, hole: str) -> None:
    network, free = ip_network(space), ip_network(hole)
    taken = [_sibling(free.supernet(new_prefix=p)) for p in range(network.prefixlen + 1, free.prefixlen + 1)]
    assert sum(t.num_addresses for t in taken) + free.num_addresses == network.num_addresses
    assert choose_subnet(network, free.prefixlen, taken, rng=random.Random(0)) == free
    with pytest.raises(OutOfSubnets):
        choose_subnet(network, free.prefixlen, [*taken, free], rng=random.Random(0))


_SMALL = ip_network("10.244.0.0/20")


@st.composite
def _entries(draw: st.DrawFn) -> IPv4Network:
    length = draw(st.integers(18, 28))
    offset = draw(st.integers(0, 2**14 - 1)) >> (32 - length) << (32 - length)
    return IPv4Network((int(ip_network("10.244.0.0/18").network_address) + offset, length))


@given(
    taken=st.lists(_entries(), max_size=12),
    cooling=st.lists(_entries(), max_size=12),
    previous=st.none() | _entries(),
    seed=st.integers(0, 2**32),
)
def test_choice_obeys_the_rules(taken: list, cooling: list, previous: IPv4Network | None, seed: int) -> None:
    candidates = list(_SMALL.subnets(new_prefix=24))
    free = [c for c in candidates if not any(c.overlaps(t) for t in taken)]
    fresh = [c for c in free if not any(c.overlaps(t) for t in cooling)]
    try:
        chosen = choose_subnet(_SMALL, 24, taken, previous=previous, cooling=cooling, rng=random.Random(seed))
    except OutOfSubnets as exc:
        assert not free and exc.total == 16
        return
    assert chosen in free
    if previous in free:
        assert chosen == previous
    elif fresh:
        assert chosen in fresh
