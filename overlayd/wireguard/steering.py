"""Which worker process receives a datagram: a classic BPF program on the SO_REUSEPORT group.

The kernel runs it for every datagram to our port and gives the datagram to the socket whose
position in the group (bind order: the control process first, then worker 1, 2, ...) it returns:

- a transport message (type 4, at least 32 bytes) goes to worker (lowest byte of its receiver
  index) mod workers. The control process picks each peer's indices so that they all name that
  peer's worker: one process opens all of a session's packets, in order, against one replay
  window, so a replayed packet can never reach a window that has not seen it;
- everything else (handshake messages, cookie replies, junk) goes to the control process.

`worker_for` is the same rule in Python, for tests and for documentation.
"""

from __future__ import annotations

import ctypes
import socket
import struct

from overlayd.errors import KernelError
from overlayd.wireguard.constants import MESSAGE_TRANSPORT, TRANSPORT_MIN_SIZE

SO_ATTACH_REUSEPORT_CBPF = 51

# Classic BPF opcodes (linux/filter.h); the program sees the datagram from its first byte.
_LD_B_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS
_LD_W_LEN = 0x80  # BPF_LD | BPF_W | BPF_LEN
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_MOD_K = 0x94  # BPF_ALU | BPF_MOD | BPF_K
_RET_A = 0x16  # BPF_RET | BPF_A
_RET_K = 0x06  # BPF_RET | BPF_K
_INSN = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k


def worker_for(datagram: bytes, workers: int) -> int:
    """The worker the program below picks for `datagram`."""
    if len(datagram) < TRANSPORT_MIN_SIZE or datagram[0] != MESSAGE_TRANSPORT:
        return 0
    return datagram[4] % workers


def program(workers: int) -> list[tuple[int, int, int, int]]:
    """The steering program for `workers` sockets, as (code, jt, jf, k) instructions (a jump
    skips jt or jf instructions after itself)."""
    return [
        (_LD_B_ABS, 0, 0, 0),  # A = type (first byte; the other three are zero in every message)
        (_JEQ_K, 0, 5, MESSAGE_TRANSPORT),  # not transport: to the control process
        (_LD_W_LEN, 0, 0, 0),  # A = datagram length
        (_JGE_K, 0, 3, TRANSPORT_MIN_SIZE),  # too short for transport: to the control process
        (_LD_B_ABS, 0, 0, 4),  # A = lowest byte of the receiver index (little-endian)
        (_MOD_K, 0, 0, workers),
        (_RET_A, 0, 0, 0),
        (_RET_K, 0, 0, 0),
    ]


def attach(sock: socket.socket, workers: int) -> None:
    """Install the program on `sock`'s reuseport group (any member will do)."""
    code = b"".join(_INSN.pack(*insn) for insn in program(workers))
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("=HxxxxxxQ", len(code) // _INSN.size, ctypes.addressof(buffer))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as e:
        raise KernelError(f"cannot attach the worker steering program: {e.strerror}") from None
