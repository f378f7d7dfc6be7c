"""Per-peer handshake state, with every state transition in one table (h11's _state.py style)."""

import enum

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from overlayd.wireguard.errors import HandshakeStateError
from overlayd.wireguard.noise import SymmetricState


class HandshakeState(enum.Enum):
    ZEROED = "zeroed"
    INITIATION_CREATED = "initiation_created"  # we initiated and wait for a response
    INITIATION_CONSUMED = "initiation_consumed"  # we accepted an initiation, response not yet made
    RESPONSE_CREATED = "response_created"  # we responded; keys can be derived (responder)
    RESPONSE_CONSUMED = "response_consumed"  # we got the response; keys can be derived (initiator)


class HandshakeEvent(enum.Enum):
    CREATE_INITIATION = "create_initiation"
    CONSUME_INITIATION = "consume_initiation"
    CREATE_RESPONSE = "create_response"
    CONSUME_RESPONSE = "consume_response"
    BEGIN_SESSION = "begin_session"
    CLEAR = "clear"


_S = HandshakeState
_E = HandshakeEvent
# A new initiation (ours or the peer's) replaces whatever exchange was unfinished.
TRANSITIONS: dict[tuple[HandshakeState, HandshakeEvent], HandshakeState] = {
    **{(s, _E.CREATE_INITIATION): _S.INITIATION_CREATED for s in _S},
    **{(s, _E.CONSUME_INITIATION): _S.INITIATION_CONSUMED for s in _S},
    **{(s, _E.CLEAR): _S.ZEROED for s in _S},
    (_S.INITIATION_CONSUMED, _E.CREATE_RESPONSE): _S.RESPONSE_CREATED,
    (_S.INITIATION_CREATED, _E.CONSUME_RESPONSE): _S.RESPONSE_CONSUMED,
    (_S.RESPONSE_CREATED, _E.BEGIN_SESSION): _S.ZEROED,
    (_S.RESPONSE_CONSUMED, _E.BEGIN_SESSION): _S.ZEROED,
}


def next_state(state: HandshakeState, event: HandshakeEvent) -> HandshakeState:
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise HandshakeStateError(f"cannot {event.value} in handshake state {state.value}") from None


class Handshake:
    """The unfinished exchange with one peer plus the anti-replay memory that outlives it."""

    __slots__ = ("state", "symmetric", "local_ephemeral", "local_index", "remote_index", "remote_ephemeral",
                 "last_timestamp", "last_initiation_consumed", "last_sent")

    def __init__(self) -> None:
        self.state = HandshakeState.ZEROED
        self.symmetric: SymmetricState | None = None
        self.local_ephemeral: X25519PrivateKey | None = None
        self.local_index: int | None = None
        self.remote_index = 0
        self.remote_ephemeral = b""
        # Kept across sessions: they reject replayed or too frequent initiations and
        # rate-limit our own.
        self.last_timestamp = b""
        self.last_initiation_consumed: float | None = None
        self.last_sent: float | None = None

    def _advance(self, event: HandshakeEvent) -> None:
        self.state = next_state(self.state, event)

    def initiation_created(self, symmetric: SymmetricState, ephemeral: X25519PrivateKey, local_index: int) -> None:
        self._advance(HandshakeEvent.CREATE_INITIATION)
        self.symmetric, self.local_ephemeral, self.local_index = symmetric, ephemeral, local_index

    def initiation_consumed(
        self, symmetric: SymmetricState, remote_index: int, remote_ephemeral: bytes, timestamp: bytes, now: float
    ) -> None:
        self._advance(HandshakeEvent.CONSUME_INITIATION)
        self.symmetric, self.remote_index, self.remote_ephemeral = symmetric, remote_index, remote_ephemeral
        self.last_timestamp = timestamp
        self.last_initiation_consumed = now

    def response_created(self, local_index: int) -> None:
        self._advance(HandshakeEvent.CREATE_RESPONSE)
        self.local_index = local_index

    def response_consumed(self, symmetric: SymmetricState, remote_index: int) -> None:
        self._advance(HandshakeEvent.CONSUME_RESPONSE)
        self.symmetric, self.remote_index = symmetric, remote_index

    def session_begun(self) -> None:
        self._advance(HandshakeEvent.BEGIN_SESSION)
        self._forget()

    def clear(self) -> None:
        self._advance(HandshakeEvent.CLEAR)
        self._forget()

    def _forget(self) -> None:
        # Python cannot scrub the key objects; dropping every reference is what we can do.
        self.symmetric = None
        self.local_ephemeral = None
        self.local_index = None
        self.remote_ephemeral = b""
