"""Send counters shared by the worker processes of one interface.

Every process that seals with a keypair takes its counters from the keypair's slot here, a
lease of LEASE counters at a time, so no counter is ever used twice with one key (a repeated
nonce would give the key away) and the counters on the wire stay close to increasing: the
peer's replay window (8,128 counters in the kernel, wireguard-go and ours) absorbs the
reordering of at most one lease per worker.

A slot's value only grows. A freed slot goes to a new keypair without a reset: a worker that
has not yet heard the old keypair is gone can still seal with it, and it then draws counters
above any that key ever used. A new session may start at any counter (the receiver only needs
them below REJECT_AFTER_MESSAGES), and 2^60 leave room for any number of sessions.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from typing import Protocol

from overlayd.wireguard.constants import REJECT_AFTER_MESSAGES

LEASE = 512  # counters per lease: one lock per 512 datagrams, reordering far inside 8,128
STALE = 4096  # a lease this far behind the slot is renewed before use: half the replay window
_SLOT = struct.Struct("=Q")


class Leased(Protocol):
    """What a lease updates: a Keypair's counter range and its slot."""

    send_counter: int
    lease_end: int
    slot: int


class CounterSpace:
    """`slots` 64-bit counters in shared memory, and one lock, made before the workers fork.

    The lock is a POSIX record lock on the memory's file: the kernel drops it when its holder
    dies (a semaphore would stay taken, and every process would hang on its next lease). It is
    per process, which is enough: in each process only the thread holding the core's lock leases.
    """

    def __init__(self, slots: int) -> None:
        self._fd = os.memfd_create("overlayd-wg-counters", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, slots * _SLOT.size)
        self._memory = mmap.mmap(self._fd, slots * _SLOT.size)  # shared with the forked workers
        self._free = list(range(slots - 1, -1, -1))  # only the control process hands out slots

    def new_slot(self) -> int | None:
        """A slot for a new keypair, or None when all are taken (the keypair then has none)."""
        return self._free.pop() if self._free else None

    def free_slot(self, slot: int) -> None:
        self._free.append(slot)

    def reserve(self, keypair: Leased, count: int) -> bool:
        """Make sure `keypair` has `count` counters to seal with that the peer's replay window
        still takes: a new lease when the old one is used up, or when the other processes have
        moved the slot on by more than STALE (a lease a quiet worker took long ago would be
        too old on arrival). False if the slot is exhausted (time to rekey)."""
        if keypair.send_counter + count > keypair.lease_end \
                or self.value(keypair.slot) - keypair.send_counter > STALE:
            self.lease(keypair, count)
        return keypair.send_counter + count <= keypair.lease_end

    def lease(self, keypair: Leased, count: int) -> None:
        """Give `keypair` at least `count` fresh counters from its slot."""
        take = max(count, LEASE)
        offset = keypair.slot * _SLOT.size
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            start = _SLOT.unpack_from(self._memory, offset)[0]
            _SLOT.pack_into(self._memory, offset, min(start + take, REJECT_AFTER_MESSAGES))
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        keypair.send_counter = start
        keypair.lease_end = min(start + take, REJECT_AFTER_MESSAGES)

    def value(self, slot: int) -> int:
        """Counters handed out so far from `slot` (read without the lock: an aligned 8-byte
        load, and a stale value only costs an early lease)."""
        return _SLOT.unpack_from(self._memory, slot * _SLOT.size)[0]
