import ipaddress

from overlayd.backend.addresses import AddressPlan, plan_addresses
from overlayd.backend.objects import Address

iface = ipaddress.ip_interface
OURS = 213


def addr(text: str, protocol: int = OURS, scope: int = 0) -> Address:
    return Address(7, iface(text), protocol, scope)


def test_present_address_needs_nothing_even_if_someone_else_added_it() -> None:
    assert plan_addresses({iface("10.244.3.1/24")}, [addr("10.244.3.1/24", protocol=0)], OURS) == AddressPlan((), ())


def test_subnet_change_swaps_our_address_and_keeps_foreign_and_kernel_ones() -> None:
    have = [addr("10.244.3.1/24"), addr("10.99.0.1/24", protocol=0), addr("fe80::1/64", protocol=3, scope=253)]
    assert plan_addresses({iface("10.244.50.1/24")}, have, OURS) == AddressPlan(
        remove=(have[0],), add=(iface("10.244.50.1/24"),)
    )


def test_same_ip_with_another_prefix_is_replaced() -> None:
    have = [addr("fd00:3::1/48")]
    assert plan_addresses({iface("fd00:3::1/64")}, have, OURS) == AddressPlan((have[0],), (iface("fd00:3::1/64"),))
