import ipaddress
from pathlib import Path

import pytest

from overlayd.backend.host import enable_forwarding, ensure_sysctl, gateway_of
from overlayd.errors import KernelError


def test_gateway_is_first_host_address_with_subnet_prefix() -> None:
    assert gateway_of(ipaddress.ip_network("10.244.3.0/24")) == ipaddress.ip_interface("10.244.3.1/24")
    assert gateway_of(ipaddress.ip_network("fd00:0:0:3::/64")) == ipaddress.ip_interface("fd00:0:0:3::1/64")


def _sysctl_tree(tmp_path: Path, v4: str, v6: str) -> Path:
    (tmp_path / "net/ipv4").mkdir(parents=True)
    (tmp_path / "net/ipv6/conf/all").mkdir(parents=True)
    (tmp_path / "net/ipv4/ip_forward").write_text(v4)
    (tmp_path / "net/ipv6/conf/all/forwarding").write_text(v6)
    return tmp_path


def test_forwarding_is_switched_on_once(tmp_path: Path) -> None:
    root = _sysctl_tree(tmp_path, "0\n", "0\n")
    assert enable_forwarding(4, root) is True
    assert (root / "net/ipv4/ip_forward").read_text() == "1\n"
    assert enable_forwarding(4, root) is False
    assert (root / "net/ipv6/conf/all/forwarding").read_text() == "0\n"
    assert enable_forwarding(6, root) is True
    assert (root / "net/ipv6/conf/all/forwarding").read_text() == "1\n"


def test_unwritable_sysctl_is_a_kernel_error(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match="accept_dad to 0"):
        ensure_sysctl(tmp_path / "net/ipv6/conf/nosuch/accept_dad", "0")
