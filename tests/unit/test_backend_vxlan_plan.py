"""The pure VXLAN planner, including a convergence property against a tiny kernel model."""

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from overlayd.backend.objects import NUD_PERMANENT, FdbEntry, Link, Neighbour, Route, VxlanAttrs
from overlayd.backend.peers import PeerVtep
from overlayd.backend.vxlan_plan import (
    Change,
    DeleteFdb,
    DeleteNeighbour,
    DeleteRoute,
    Observed,
    SetFdb,
    SetNeighbour,
    SetRoute,
    VxlanSpec,
    device_address,
    link_changes,
    plan_peer_changes,
    plan_peers,
    programmed_state,
    recreate_reason,
    vxlan_mtu,
)

net = ipaddress.ip_network
ip = ipaddress.ip_address
VX = 10  # our VXLAN device's ifindex
ETH = 3
PROTO = 213
NUD_REACHABLE = 0x02


def route(dst: str, gw: str | None, *, oif: int = VX, proto: int = PROTO, onlink: bool = True,
          priority: int | None = None) -> Route:
    d = net(dst)
    if priority is None:
        priority = 0 if d.version == 4 else 1024
    return Route(d, 254, proto, 1, oif, ip(gw) if gw else None, onlink, priority, 0, 0)


def peer(n: int) -> PeerVtep:
    return PeerVtep(ip(f"198.18.0.{10 + n}"), f"02:00:00:00:00:{n:02x}")


def neigh(addr: str, mac: str | None, state: int = NUD_PERMANENT) -> Neighbour:
    return Neighbour(VX, ip(addr), mac, state)


def fdb(mac: str, dst: str | None, **kw) -> FdbEntry:
    return FdbEntry(VX, mac, ip(dst) if dst else None, **kw)


PEERS = {net("10.244.2.0/24"): peer(2), net("10.244.3.0/24"): peer(3)}
IN_PLACE = Observed(
    routes=[route("10.244.2.0/24", "10.244.2.0"), route("10.244.3.0/24", "10.244.3.0"),
            route("0.0.0.0/0", "198.18.0.1", oif=ETH, proto=4, onlink=False)],
    neighbours=[neigh("10.244.2.0", "02:00:00:00:00:02"), neigh("10.244.3.0", "02:00:00:00:00:03")],
    fdb=[fdb("02:00:00:00:00:02", "198.18.0.12"), fdb("02:00:00:00:00:03", "198.18.0.13")],
)


def plan(desired, observed):
    return plan_peers(desired, observed, ifindex=VX, protocol=PROTO)


def test_empty_kernel_gets_l2_first_then_routes() -> None:
    assert plan(PEERS, Observed([], [], [])) == [
        SetFdb("02:00:00:00:00:02", ip("198.18.0.12"), Change.ADD),
        SetFdb("02:00:00:00:00:03", ip("198.18.0.13"), Change.ADD),
        SetNeighbour(ip("10.244.2.0"), "02:00:00:00:00:02", Change.ADD),
        SetNeighbour(ip("10.244.3.0"), "02:00:00:00:00:03", Change.ADD),
        SetRoute(net("10.244.2.0/24"), ip("10.244.2.0"), Change.ADD),
        SetRoute(net("10.244.3.0/24"), ip("10.244.3.0"), Change.ADD),
    ]


def test_matching_state_needs_nothing() -> None:
    assert plan(PEERS, IN_PLACE) == []


def test_removed_peer_goes_routes_first_then_l2() -> None:
    actions = plan({net("10.244.2.0/24"): peer(2)}, IN_PLACE)
    assert actions == [
        DeleteRoute(IN_PLACE.routes[1]),
        DeleteNeighbour(IN_PLACE.neighbours[1]),
        DeleteFdb(IN_PLACE.fdb[1]),
    ]
    assert all(a.change is Change.REMOVE for a in actions)


def test_strays_are_deleted_foreign_and_kernel_routes_kept() -> None:
    strays = [
        route("10.244.9.0/24", "10.244.9.0"),  # ours, no longer wanted
        route("10.244.8.0/24", None, proto=3, onlink=False),  # someone's, on our device
        route("10.50.0.0/24", "198.18.0.1", oif=ETH, onlink=False),  # our mark, another device
        route("10.244.2.0/24", "10.244.2.0", priority=7),  # second copy, other metric
    ]
    kept = [
        route("10.244.1.0/32", None, proto=2, onlink=False),  # kernel route on our device
        route("10.60.0.0/24", "198.18.0.1", oif=ETH, proto=4, onlink=False),
    ]
    observed = Observed(
        routes=[*IN_PLACE.routes, *strays, *kept],
        neighbours=[*IN_PLACE.neighbours, neigh("10.244.9.0", "02:00:00:00:00:09"),
                    neigh("10.244.7.0", None, state=0x01)],  # incomplete: the kernel's business
        fdb=[*IN_PLACE.fdb, fdb("02:00:00:00:00:09", "198.18.0.19"), fdb("00:00:00:00:00:00", "198.18.0.20")],
    )
    actions = plan(PEERS, observed)
    assert set(actions) == {DeleteRoute(r) for r in strays} | {
        DeleteNeighbour(observed.neighbours[2]),
        DeleteFdb(observed.fdb[2]),
        DeleteFdb(observed.fdb[3]),
    }
    kinds = [type(a) for a in actions]
    assert kinds == sorted(kinds, key=[DeleteRoute, DeleteNeighbour, DeleteFdb].index)


def test_wrong_entries_are_changed_in_place() -> None:
    observed = Observed(
        routes=[route("10.244.2.0/24", None, onlink=False),  # no gateway
                route("10.244.3.0/24", "10.244.3.0", proto=4)],  # not our mark
        neighbours=[neigh("10.244.2.0", "02:00:00:00:00:77"),
                    neigh("10.244.3.0", "02:00:00:00:00:03", state=NUD_REACHABLE)],  # learnt, not permanent
        fdb=[fdb("02:00:00:00:00:02", "198.18.0.77"),
             fdb("02:00:00:00:00:03", "198.18.0.13", port=8472)],  # right dst, wrong port
    )
    actions = plan(PEERS, observed)
    assert actions == [
        SetFdb("02:00:00:00:00:02", ip("198.18.0.12"), Change.CHANGE),
        SetFdb("02:00:00:00:00:03", ip("198.18.0.13"), Change.CHANGE),
        SetNeighbour(ip("10.244.2.0"), "02:00:00:00:00:02", Change.CHANGE),
        SetNeighbour(ip("10.244.3.0"), "02:00:00:00:00:03", Change.CHANGE),
        SetRoute(net("10.244.2.0/24"), ip("10.244.2.0"), Change.CHANGE),
        SetRoute(net("10.244.3.0/24"), ip("10.244.3.0"), Change.CHANGE),
    ]


def test_a_foreign_route_holding_the_slot_is_replaced() -> None:
    blackhole = Route(net("10.244.2.0/24"), 254, 4, 6, None, None, False, 0, 0, 0)
    assert plan({net("10.244.2.0/24"): peer(2)}, Observed([blackhole], [], []))[-1] == SetRoute(
        net("10.244.2.0/24"), ip("10.244.2.0"), Change.CHANGE
    )


def test_ipv6_routes_match_with_the_kernel_default_metric() -> None:
    desired = {net("fd00:0:0:2::/64"): peer(2)}
    observed = Observed([route("fd00:0:0:2::/64", "fd00:0:0:2::")], [neigh("fd00:0:0:2::", "02:00:00:00:00:02")],
                        [fdb("02:00:00:00:00:02", "198.18.0.12")])
    assert observed.routes[0].priority == 1024
    assert plan(desired, observed) == []


# -- convergence against a model of the kernel -------------------------------------------------


def apply(observed: Observed, action) -> Observed:
    routes, neighbours, entries = list(observed.routes), list(observed.neighbours), list(observed.fdb)
    match action:
        case SetFdb(mac=mac, dst=dst):
            entries = [e for e in entries if e.mac != mac] + [FdbEntry(VX, mac, dst)]
        case SetNeighbour(ip=addr, mac=mac):
            neighbours = [n for n in neighbours if n.ip != addr] + [Neighbour(VX, addr, mac, NUD_PERMANENT)]
        case SetRoute(dst=dst, gateway=gw):
            new = route(str(dst), str(gw))
            routes = [r for r in routes if (r.dst, r.tos, r.priority) != (dst, 0, new.priority)] + [new]
        case DeleteRoute(route=r):
            assert r in routes
            routes.remove(r)
        case DeleteNeighbour(neighbour=n):
            neighbours.remove(n)
        case DeleteFdb(entry=e):
            entries.remove(e)
    return Observed(routes, neighbours, entries)


SUBNETS = [net(f"10.244.{i}.0/24") for i in range(2, 8)]
observed_routes = st.lists(
    st.builds(
        lambda s, gw, oif, proto, prio: Route(s, 254, proto, 1, oif, gw, gw is not None, prio, 0, 0),
        st.sampled_from([*SUBNETS, net("10.60.0.0/24")]),
        st.sampled_from([None, ip("10.244.2.0"), ip("10.244.3.0"), ip("198.18.0.1")]),
        st.sampled_from([VX, ETH]),
        st.sampled_from([PROTO, 2, 3, 4]),
        st.sampled_from([0, 7]),
    ),
    unique_by=lambda r: (r.dst, r.priority),
)
observed_neighbours = st.lists(
    st.builds(lambda i, m, state: Neighbour(VX, ip(f"10.244.{i}.0"), f"02:00:00:00:00:{m:02x}", state),
              st.integers(2, 9), st.integers(1, 6), st.sampled_from([NUD_PERMANENT, NUD_REACHABLE])),
    unique_by=lambda n: n.ip,
)
observed_fdb = st.lists(
    st.builds(lambda m, h, port: FdbEntry(VX, f"02:00:00:00:00:{m:02x}", ip(f"198.18.0.{10 + h}"), port=port),
              st.integers(1, 6), st.integers(1, 6), st.sampled_from([None, 8472])),
    unique_by=lambda e: e.mac,
)
desired_peers = st.dictionaries(st.sampled_from(SUBNETS), st.integers(2, 6).map(peer))


@given(desired_peers, observed_routes, observed_neighbours, observed_fdb)
def test_plan_converges_in_one_pass_and_spares_what_is_not_ours(desired, routes, neighbours, entries) -> None:
    state = Observed(routes, neighbours, entries)
    actions = plan(desired, state)
    for action in actions:
        state = apply(state, action)
    assert plan(desired, state) == []
    for subnet, vtep in desired.items():
        assert route(str(subnet), str(subnet.network_address)) in state.routes
        assert Neighbour(VX, subnet.network_address, vtep.vtep_mac, NUD_PERMANENT) in state.neighbours
        assert FdbEntry(VX, vtep.vtep_mac, vtep.public_ip) in state.fdb
    for r in state.routes:  # what remains is desired, or not ours
        assert r.dst in desired or (r.protocol != PROTO and (r.oif != VX or r.protocol == 2))
    for r in routes:  # routes that are not ours survive unless a desired route took their slot
        if r.protocol != PROTO and (r.oif != VX or r.protocol == 2) and r.dst not in desired:
            assert r in state.routes
    assert {e.mac for e in state.fdb} == {v.vtep_mac for v in desired.values()}
    assert all(n.ip in {s.network_address for s in desired} for n in state.neighbours if n.permanent)
    counted = [a.change for a in actions]
    assert counted.count(Change.ADD) + counted.count(Change.CHANGE) + counted.count(Change.REMOVE) == len(actions)


# -- planning a change without a dump ------------------------------------------------------------


def test_programmed_state_is_what_plan_peers_leaves() -> None:
    assert plan(PEERS, programmed_state(PEERS, ifindex=VX, protocol=PROTO)) == []
    state = programmed_state(PEERS, ifindex=VX, protocol=PROTO)
    assert sorted(state.routes, key=lambda r: r.dst) == IN_PLACE.routes[:2]
    assert (state.neighbours, state.fdb) == (IN_PLACE.neighbours, IN_PLACE.fdb)


def test_one_new_peer_among_many_is_three_actions() -> None:
    many = {net(f"10.{i // 256}.{i % 256}.0/24"):
            PeerVtep(ip(f"198.19.{i // 256}.{i % 256}"), f"02:01:00:00:{i // 256:02x}:{i % 256:02x}")
            for i in range(1, 2001)}
    new = net("10.200.0.0/24")
    grown = {**many, new: peer(9)}
    assert plan_peer_changes(many, grown, ifindex=VX, protocol=PROTO) == [
        SetFdb(peer(9).vtep_mac, peer(9).public_ip, Change.ADD),
        SetNeighbour(new.network_address, peer(9).vtep_mac, Change.ADD),
        SetRoute(new, new.network_address, Change.ADD),
    ]
    assert plan_peer_changes(grown, grown, ifindex=VX, protocol=PROTO) == []


def test_a_host_moving_one_of_two_subnets_keeps_its_fdb_entry() -> None:
    # One host (one MAC) holds .2 and .3; it gives up .3: the FDB entry stays for .2.
    both = {net("10.244.2.0/24"): peer(2), net("10.244.3.0/24"): peer(2)}
    one = {net("10.244.2.0/24"): peer(2)}
    actions = plan_peer_changes(both, one, ifindex=VX, protocol=PROTO)
    assert [type(a) for a in actions] == [DeleteRoute, DeleteNeighbour]


subnet_peers = st.dictionaries(st.sampled_from(SUBNETS), st.integers(2, 6).map(peer), max_size=6)
# Several subnets per host (a shared MAC and IP) as well as hosts that moved to another IP.
moved_peers = st.dictionaries(st.sampled_from(SUBNETS), st.builds(
    lambda n, h: PeerVtep(ip(f"198.18.0.{10 + h}"), f"02:00:00:00:00:{n:02x}"), st.integers(2, 4), st.integers(2, 4)))


@given(st.one_of(subnet_peers, moved_peers), st.one_of(subnet_peers, moved_peers))
def test_changes_planned_without_a_dump_equal_a_full_plan(before, after) -> None:
    full = plan(after, programmed_state(before, ifindex=VX, protocol=PROTO))
    assert plan_peer_changes(before, after, ifindex=VX, protocol=PROTO) == full


# -- the device --------------------------------------------------------------------------------

SPEC = VxlanSpec("ovl.vx", 1, 4789, ip("198.18.0.11"), ETH, 1450, "02:00:00:00:00:01")
GOOD = Link(VX, "ovl.vx", "vxlan", "02:00:00:00:00:01", 1450, True,
            VxlanAttrs(1, 4789, ip("198.18.0.11"), ETH, False))


def test_matching_device_is_adopted_as_is() -> None:
    assert recreate_reason(SPEC, GOOD) is None
    assert link_changes(SPEC, GOOD) == {}


def test_mtu_mac_and_state_are_fixed_in_place() -> None:
    drifted = Link(VX, "ovl.vx", "vxlan", "02:00:00:00:00:99", 1500, False, GOOD.vxlan)
    assert recreate_reason(SPEC, drifted) is None
    assert link_changes(SPEC, drifted) == {"mtu": 1450, "address": "02:00:00:00:00:01", "state": "up"}


def test_settings_fixed_at_creation_force_a_recreate() -> None:
    other = VxlanAttrs(2, 8472, ip("198.18.0.99"), 7, True)
    reason = recreate_reason(SPEC, Link(VX, "ovl.vx", "vxlan", None, 1450, True, other))
    assert reason == ("VNI 2 -> 1, port 8472 -> 4789, local 198.18.0.99 -> 198.18.0.11, "
                      "underlay ifindex 7 -> 3, learning True -> False")
    assert "not a VXLAN device" in recreate_reason(SPEC, Link(VX, "ovl.vx", "bridge", None, 1500, True))


def test_device_address_and_mtu() -> None:
    assert device_address(net("10.244.3.0/24")) == ipaddress.ip_interface("10.244.3.0/32")
    assert device_address(net("fd00:0:0:3::/64")) == ipaddress.ip_interface("fd00:0:0:3::/128")
    assert vxlan_mtu(1500, 4) == 1450 and vxlan_mtu(1500, 6) == 1430
