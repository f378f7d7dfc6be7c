"""Transport keypairs and their rotation: previous, current and next (whitepaper 5.4.6, 6.1).

A responder's new keypair waits in `next` until the initiator proves it has it by sending the
first transport packet with it; only then does it become `current` (key confirmation).
"""

from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from overlayd.wireguard.constants import REJECT_AFTER_MESSAGES
from overlayd.wireguard.replay import ReplayWindow

if TYPE_CHECKING:
    from overlayd.wireguard.peer import Peer


class Keypair:
    """One session's keys. The AEAD objects are built once so the data path only calls them."""

    __slots__ = ("send", "receive", "send_key", "receive_key", "send_counter", "lease_end", "slot",
                 "created", "is_initiator", "local_index", "remote_index", "replay", "peer")

    def __init__(
        self, send_key: bytes, receive_key: bytes, *, created: float, is_initiator: bool,
        local_index: int, remote_index: int, peer: "Peer | Any",
    ) -> None:
        self.send = ChaCha20Poly1305(send_key)
        self.receive = ChaCha20Poly1305(receive_key)
        # The raw keys go to worker processes (plane.py); repr() is object's, without them.
        self.send_key = send_key
        self.receive_key = receive_key
        self.send_counter = 0
        # Counters this process may use, send_counter up to lease_end: all of them in one process;
        # with workers, leases from slot `slot` of the shared CounterSpace (counters.py).
        self.lease_end = REJECT_AFTER_MESSAGES
        self.slot = -1
        self.created = created
        self.is_initiator = is_initiator
        self.local_index = local_index
        self.remote_index = remote_index
        self.replay = ReplayWindow()
        self.peer = peer


class Keypairs:
    """The rotation rules in one place; each method returns the keypairs it dropped,
    so the owner can free their indices."""

    __slots__ = ("previous", "current", "next")

    def __init__(self) -> None:
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None

    def install_as_initiator(self, keypair: Keypair) -> list[Keypair]:
        """Our initiation was answered: the new keypair is confirmed and current at once."""
        dropped = [k for k in (self.previous,) if k is not None]
        if self.next is not None:
            # An unconfirmed responder keypair may still be in use by the peer: keep it as previous.
            if self.current is not None:
                dropped.append(self.current)
            self.previous, self.next = self.next, None
        else:
            self.previous = self.current
        self.current = keypair
        return dropped

    def install_as_responder(self, keypair: Keypair) -> list[Keypair]:
        """We answered an initiation: the keypair waits in `next` for confirmation."""
        dropped = [k for k in (self.next, self.previous) if k is not None]
        self.next = keypair
        self.previous = None
        return dropped

    def confirm(self, keypair: Keypair) -> tuple[bool, list[Keypair]]:
        """First packet received with `next`: it becomes current. Returns (rotated, dropped)."""
        if keypair is not self.next:
            return False, []
        dropped = [self.previous] if self.previous is not None else []
        self.previous, self.current, self.next = self.current, keypair, None
        return True, dropped

    def clear(self) -> list[Keypair]:
        dropped = [k for k in (self.previous, self.current, self.next) if k is not None]
        self.previous = self.current = self.next = None
        return dropped
