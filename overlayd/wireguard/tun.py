"""A TUN device from /dev/net/tun: create it, read and write IP packets, read and set its MTU.

With `offload=True` every frame carries a 10-byte virtio-net header (IFF_VNET_HDR) and the
kernel is told we take partial checksums and TCP segmentation (TUNSETOFFLOAD): reads then
return TCP super-packets of up to 64 KiB that we cut ourselves (offload.py), and writes may
carry coalesced TCP segments. This is what saves a syscall and a pass through the kernel
stack per packet, as wireguard-go does since 2023.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from collections.abc import Sequence

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from overlayd.errors import KernelError

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
IFNAMSIZ = 16

_IFREQ_FLAGS = struct.Struct("16sH22x")
_IFREQ_INT = struct.Struct("16si20x")


def check_ifname(name: str) -> bytes:
    """The name as the kernel wants it; refuses what `ip link` would (and '/', for socket paths)."""
    raw = name.encode("ascii", "replace")
    if not raw or len(raw) >= IFNAMSIZ or name in (".", "..") or any(c in name for c in "/: \t\n?"):
        raise KernelError(f"invalid interface name {name!r}")
    return raw


class TunDevice:
    """One open queue of a TUN interface; the interface vanishes when it is closed."""

    def __init__(self, fd: int, name: str, offload: bool) -> None:
        self.fd = fd
        self.name = name
        self.offload = offload

    @classmethod
    def create(cls, name: str, *, offload: bool = True) -> TunDevice:
        return cls._open_queue(name, IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0), offload)

    @classmethod
    def create_queues(cls, name: str, queues: int, *, offload: bool = True) -> list[TunDevice]:
        """A multi-queue interface (IFF_MULTI_QUEUE), one TunDevice per queue: the kernel hands
        each flow's packets to one queue (by flow hash, or the queue its answers were written
        to), so worker processes with a queue each share the outbound packets."""
        flags = IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE | (IFF_VNET_HDR if offload else 0)
        opened: list[TunDevice] = []
        try:
            for _ in range(queues):
                opened.append(cls._open_queue(opened[0].name if opened else name, flags, offload))
        except KernelError:
            for queue in opened:
                queue.close()
            raise
        return opened

    @classmethod
    def _open_queue(cls, name: str, flags: int, offload: bool) -> TunDevice:
        raw = check_ifname(name)
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KernelError(f"cannot open /dev/net/tun: {e.strerror}") from None
        try:
            ifr = fcntl.ioctl(fd, TUNSETIFF, _IFREQ_FLAGS.pack(raw, flags))
            if offload:
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        except OSError as e:
            os.close(fd)
            raise KernelError(f"cannot create TUN device {name}: {e.strerror}") from None
        actual = _IFREQ_FLAGS.unpack(ifr)[0].rstrip(b"\0").decode()
        os.set_blocking(fd, False)  # the data path polls on EAGAIN so that it can be woken
        return cls(fd, actual, offload)

    def read_into(self, buffer: bytearray) -> int:
        """One frame into `buffer`; raises BlockingIOError when none is queued."""
        return os.readv(self.fd, (buffer,))

    def write(self, iovec: Sequence[bytes | bytearray | memoryview]) -> bool:
        """One frame from pieces (the kernel gathers them: no copy here). False when the kernel
        refused it (EIO while the link is down, EINVAL for a frame it rejects): the packet is
        dropped as a NIC would, and the data path keeps running."""
        try:
            os.writev(self.fd, iovec)
        except OSError:
            return False
        return True

    @property
    def mtu(self) -> int:
        return _IFREQ_INT.unpack(self._ifreq(SIOCGIFMTU, 0))[1]

    @mtu.setter
    def mtu(self, value: int) -> None:
        self._ifreq(SIOCSIFMTU, value)

    def limit_segments(self, segments: int) -> None:
        """Cap the kernel's TSO super-packets at `segments` segments, so that the datagrams
        made from one fit one UDP GSO send (else every 64 KiB read needs a second send)."""
        try:
            with IPRoute() as ipr:
                ipr.link("set", index=socket.if_nametoindex(self.name), gso_max_segs=segments)
        except (OSError, NetlinkError) as e:
            raise KernelError(f"cannot set gso_max_segs of {self.name}: {e}") from None

    def _ifreq(self, request: int, value: int) -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                return fcntl.ioctl(s.fileno(), request, _IFREQ_INT.pack(self.name.encode(), value))
            except OSError as e:
                raise KernelError(f"MTU of {self.name}: {e.strerror}") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
