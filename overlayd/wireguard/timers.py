"""The per-peer timers of WireGuard (whitepaper 6; wireguard-go device/timers.go, kernel timers.c).

Timers are deadlines on the injected clock. The `on_*` methods are the events that arm or
disarm them; `expired(now)` hands the due ones back to the device, which acts on them.
"""

import enum
import math
from collections.abc import Callable

from overlayd.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    REKEY_TIMEOUT,
    ZERO_KEY_MATERIAL_AFTER,
)


class Timer(enum.Enum):
    RETRANSMIT_HANDSHAKE = "retransmit_handshake"
    SEND_KEEPALIVE = "send_keepalive"
    NEW_HANDSHAKE = "new_handshake"
    ZERO_KEY_MATERIAL = "zero_key_material"
    PERSISTENT_KEEPALIVE = "persistent_keepalive"

    # Members are singletons: hash by identity in C. Enum's own __hash__ is a Python call,
    # several per packet on the data path.
    __hash__ = object.__hash__


_ORDER = tuple(Timer)


class PeerTimers:
    __slots__ = ("deadlines", "handshake_attempts", "need_another_keepalive", "sent_lastminute_handshake")

    def __init__(self) -> None:
        self.deadlines: dict[Timer, float] = {}
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        self.sent_lastminute_handshake = False

    def pending(self, timer: Timer) -> bool:
        return timer in self.deadlines

    def arm(self, timer: Timer, at: float) -> None:
        self.deadlines[timer] = at

    def disarm(self, timer: Timer) -> None:
        self.deadlines.pop(timer, None)

    def next_deadline(self) -> float:
        return min(self.deadlines.values(), default=math.inf)

    def expired(self, now: float) -> list[Timer]:
        """Due timers in a fixed order, removed from the pending set."""
        due = [t for t in _ORDER if self.deadlines.get(t, math.inf) <= now]
        for t in due:
            del self.deadlines[t]
        return due

    def clear(self) -> None:
        self.deadlines.clear()

    # Events (names follow wireguard-go's timers* functions).

    def on_data_sent(self, now: float, jitter: Callable[[], float]) -> None:
        """We sent data: expect an answer within KEEPALIVE + REKEY_TIMEOUT or rehandshake.

        `jitter` is only drawn when the timer is armed, which keeps the data path cheap.
        """
        if Timer.NEW_HANDSHAKE not in self.deadlines:
            self.deadlines[Timer.NEW_HANDSHAKE] = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter()

    def on_data_received(self, now: float, count: int = 1) -> None:
        """We got `count` data packets: answer with a keepalive if we send nothing within
        KEEPALIVE_TIMEOUT; more data while that is pending asks for another one after it."""
        if Timer.SEND_KEEPALIVE not in self.deadlines:
            self.deadlines[Timer.SEND_KEEPALIVE] = now + KEEPALIVE_TIMEOUT
            count -= 1
        if count > 0:
            self.need_another_keepalive = True

    def on_authenticated_packet_sent(self) -> None:
        self.deadlines.pop(Timer.SEND_KEEPALIVE, None)

    def on_authenticated_packet_received(self) -> None:
        self.deadlines.pop(Timer.NEW_HANDSHAKE, None)

    def on_authenticated_packet_traversal(self, now: float, persistent_keepalive: int) -> None:
        if persistent_keepalive > 0:
            self.deadlines[Timer.PERSISTENT_KEEPALIVE] = now + persistent_keepalive

    def on_handshake_initiated(self, now: float, jitter: float) -> None:
        self.deadlines[Timer.RETRANSMIT_HANDSHAKE] = now + REKEY_TIMEOUT + jitter

    def on_handshake_complete(self) -> None:
        self.deadlines.pop(Timer.RETRANSMIT_HANDSHAKE, None)
        self.handshake_attempts = 0
        self.sent_lastminute_handshake = False

    def on_session_derived(self, now: float) -> None:
        self.deadlines[Timer.ZERO_KEY_MATERIAL] = now + ZERO_KEY_MATERIAL_AFTER
