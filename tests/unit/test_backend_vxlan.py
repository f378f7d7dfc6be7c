"""VxlanBackend construction and misuse (the kernel side is in tests/integration)."""

import ipaddress

import pytest

from overlayd.backend.underlay import Underlay
from overlayd.backend.vxlan import VxlanBackend
from overlayd.errors import ConfigError, UsageError

UNDERLAY = Underlay(ipaddress.ip_address("198.18.0.11"), "eth0", 2, 1500)


def test_for_underlay_derives_mtu_and_normalises_the_mac() -> None:
    backend = VxlanBackend.for_underlay(object(), "ovl.vx", 1, 4789, UNDERLAY, "02:AA:BB:CC:DD:EE")
    assert (backend.spec.mtu, backend.spec.mac, backend.spec.underlay_ifindex) == (1450, "02:aa:bb:cc:dd:ee", 2)
    v6 = Underlay(ipaddress.ip_address("2001:db8::11"), "eth0", 2, 1500)
    assert VxlanBackend.for_underlay(object(), "ovl.vx", 1, 4789, v6, "02:00:00:00:00:01").spec.mtu == 1430
    fixed = VxlanBackend.for_underlay(object(), "ovl.vx", 1, 4789, UNDERLAY, "02:00:00:00:00:01", mtu=1400)
    assert fixed.spec.mtu == 1400


def test_a_multicast_vtep_mac_is_refused() -> None:
    with pytest.raises(ConfigError, match="multicast"):
        VxlanBackend.for_underlay(object(), "ovl.vx", 1, 4789, UNDERLAY, "01:00:5e:00:00:01")


def test_reconcile_before_setup_is_a_usage_error() -> None:
    backend = VxlanBackend.for_underlay(object(), "ovl.vx", 1, 4789, UNDERLAY, "02:00:00:00:00:01")
    with pytest.raises(UsageError, match="before setup"):
        backend.reconcile({})
