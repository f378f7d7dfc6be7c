"""The UDP side of the data path: one dual-stack socket with GSO sends and GRO receives.

GSO (UDP_SEGMENT): many equal-size datagrams to one address leave in one sendmsg; the kernel
cuts them (at most 64 segments, 65,507 bytes; the last may be shorter).
GRO (UDP_GRO): one recvmsg may return several datagrams of one flow glued together, with the
segment size in a control message. Between namespaces on one host a GSO send arrives whole.
Python 3.11's socket module lacks these constants.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Iterator, Sequence

from overlayd.errors import KernelError
from overlayd.wireguard.events import Datagram, DatagramBatch, Endpoint

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SO_MARK = 36
MAX_SEGMENTS = 64
MAX_GSO_BYTES = 65507
SOCKET_BUFFER_BYTES = 8 << 20  # absorbs bursts of 64 KiB super-packets (wireguard-go: 7 MiB)
RECEIVE_BUFFER_BYTES = 65536 + 512  # one GRO batch can be a full 64 KiB

_GRO_SPACE = socket.CMSG_SPACE(4)
_U16 = struct.Struct("=H")
_I32 = struct.Struct("=i")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Buffer = bytes | bytearray | memoryview


def gso_runs(datagrams: Sequence[Datagram]) -> Iterator[tuple[Endpoint, int, list[Buffer]]]:
    """Group consecutive datagrams into GSO sends: (addr, segment size, buffers).

    A run shares one address and one size; a shorter datagram may close it (GSO allows a short
    last segment); runs respect the kernel's segment and byte limits.
    """
    run: list[Buffer] = []
    run_addr: Endpoint = ()
    size = total = 0
    for d in datagrams:
        n = len(d.data)
        addr = d.addr
        if run and (addr is run_addr or addr == run_addr) and n <= size and len(run) < MAX_SEGMENTS \
                and total + n <= MAX_GSO_BYTES:
            run.append(d.data)
            total += n
            if n < size:  # a short segment must be the last
                yield run_addr, size, run
                run = []
            continue
        if run:
            yield run_addr, size, run
        run, run_addr, size, total = [d.data], addr, n, n
    if run:
        yield run_addr, size, run


def max_gso_segments(datagram_size: int) -> int:
    """How many datagrams of `datagram_size` bytes one GSO send can carry."""
    return max(1, min(MAX_SEGMENTS, MAX_GSO_BYTES // datagram_size))


def segments(view: memoryview, size: int) -> list[memoryview]:
    """Cut a GRO receive of `len(view)` bytes into its datagrams of `size` bytes (last shorter)."""
    if size <= 0 or size >= len(view):
        return [view]
    return [view[i : i + size] for i in range(0, len(view), size)]


class UdpSocket:
    """The engine's socket. IPv6 with v4-mapped addresses when the host has IPv6, else IPv4."""

    def __init__(self, port: int = 0, fwmark: int = 0, *, reuseport: bool = False) -> None:
        """`reuseport`: a member of a SO_REUSEPORT group (the worker processes' sockets on one
        port; steering.py says which gets what)."""
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            bind_to: tuple[str, int] = ("::", port)
        except OSError:  # IPv6 disabled on this host
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            bind_to = ("0.0.0.0", port)
        try:
            for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER_BYTES)
                except PermissionError:  # not root: the kernel caps it at rmem_max / wmem_max
                    sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER_BYTES)
            _try_setsockopt(sock, SOL_UDP, UDP_GRO, 1)  # recv_into reads the segment size if on
            if fwmark:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)
            if reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(bind_to)
        except OSError as e:
            sock.close()
            raise KernelError(f"cannot open UDP port {port}: {e.strerror}") from None
        self._adopt(sock, fwmark)

    @classmethod
    def adopt(cls, fd: int, fwmark: int = 0) -> UdpSocket:
        """A socket another process of this interface opened and passed over (worker.py)."""
        udp = cls.__new__(cls)
        sock = socket.socket(fileno=fd)
        udp._adopt(sock, fwmark)
        return udp

    def _adopt(self, sock: socket.socket, fwmark: int) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.family = sock.family
        self.port: int = sock.getsockname()[1]
        self.fwmark = fwmark
        self.gso = True  # cleared if the kernel refuses a GSO send (no checksum offload on the route)
        self.sends = 0  # sendmsg/sendto calls
        self.send_errors = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def set_fwmark(self, mark: int) -> None:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        except OSError as e:
            raise KernelError(f"cannot set fwmark {mark}: {e.strerror}") from None
        self.fwmark = mark

    def recv_into(self, buffer: bytearray) -> tuple[int, int, Endpoint]:
        """(bytes, GRO segment size or 0, source); raises BlockingIOError when nothing is queued."""
        n, ancillary, _, addr = self.sock.recvmsg_into((buffer,), _GRO_SPACE)
        for level, kind, data in ancillary:
            if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
                return n, _I32.unpack_from(data)[0], addr
        return n, 0, addr

    def send(self, datagrams: Sequence[Datagram | DatagramBatch]) -> None:
        """Send in as few syscalls as GSO allows (a DatagramBatch is one send, adjacent Datagrams
        are grouped); errors drop the datagrams, as a NIC would."""
        if len(datagrams) == 1 and type(datagrams[0]) is Datagram:  # a lone packet: the short way
            self._send_one(datagrams[0].data, datagrams[0].addr)
            return
        singles: list[Datagram] = []
        for d in datagrams:
            if type(d) is Datagram:
                singles.append(d)
                continue
            assert isinstance(d, DatagramBatch)
            if singles:
                self._send_singles(singles)
                singles = []
            if len(d.data) > d.size:
                self._send_gso([d.data], d.size, d.addr)
            else:
                self._send_one(d.data, d.addr)
        if singles:
            self._send_singles(singles)

    def _send_singles(self, datagrams: Sequence[Datagram]) -> None:
        if not self.gso:
            for d in datagrams:
                self._send_one(d.data, d.addr)
            return
        for addr, size, bufs in gso_runs(datagrams):
            if len(bufs) == 1:
                self._send_one(bufs[0], addr)
            else:
                self._send_gso(bufs, size, addr)

    def _send_gso(self, bufs: list[Buffer], size: int, addr: Endpoint) -> None:
        """Datagrams of `size` bytes (the last may be shorter) in one sendmsg."""
        if self.gso:
            self.sends += 1
            try:
                self.sock.sendmsg(bufs, [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))], 0, addr)
                return
            except BlockingIOError:
                self.send_errors += 1
                return
            except OSError as e:
                if e.errno not in (errno.EIO, errno.EINVAL):
                    self.send_errors += 1
                    return
                # EIO: the route's device cannot checksum for GSO, stop using it; EINVAL: a
                # segment exceeds the path MTU, let the single sends report it.
                self.gso = e.errno != errno.EIO
        data = b"".join(bufs)
        for i in range(0, len(data), size):
            self._send_one(data[i : i + size], addr)

    def _send_one(self, data: Buffer, addr: Endpoint) -> None:
        self.sends += 1
        try:
            self.sock.sendto(data, addr)
        except OSError:  # full buffer, unreachable, filtered: drop it
            self.send_errors += 1

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread polling it (even unconnected UDP)
        except OSError:
            pass
        self.sock.close()

    def to_socket(self, ip: IPAddress, port: int) -> Endpoint:
        return to_socket_address(self.family, ip, port)


def to_socket_address(family: int, ip: IPAddress, port: int) -> Endpoint:
    """A UAPI endpoint as a socket address of `family` (IPv4 goes v4-mapped on an IPv6 socket)."""
    if family == socket.AF_INET:
        if ip.version != 4:
            raise KernelError(f"endpoint {ip} needs IPv6, which this host lacks")
        return (str(ip), port)
    if ip.version == 4:
        return (f"::ffff:{ip}", port, 0, 0)
    scope = 0
    if ip.scope_id:
        scope = int(ip.scope_id) if ip.scope_id.isdigit() else _if_index(ip.scope_id)
    return (str(ipaddress.IPv6Address(int(ip))), port, 0, scope)


def from_socket(addr: Endpoint) -> tuple[IPAddress, int]:
    """A socket's address tuple as (IP, port): v4-mapped becomes IPv4, a scope id is kept."""
    ip = ipaddress.ip_address(str(addr[0]).split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped, int(addr[1])
        if len(addr) >= 4 and addr[3]:
            ip = ipaddress.IPv6Address(f"{ip}%{addr[3]}")
    return ip, int(addr[1])


def _if_index(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise KernelError(f"no interface {name!r} for an IPv6 scope") from None


def _try_setsockopt(sock: socket.socket, level: int, option: int, value: int) -> bool:
    try:
        sock.setsockopt(level, option, value)
    except OSError:
        return False
    return True
