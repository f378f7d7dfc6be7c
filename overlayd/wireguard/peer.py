"""A configured peer: its configuration values, and the mutable state the device keeps for it."""

import collections
from dataclasses import dataclass, field

from overlayd.wireguard import noise
from overlayd.wireguard.cookie import CookieGenerator
from overlayd.wireguard.events import Endpoint, Packet
from overlayd.wireguard.handshake import Handshake
from overlayd.wireguard.keypair import Keypairs
from overlayd.wireguard.routing import Network
from overlayd.wireguard.timers import PeerTimers


@dataclass(frozen=True)
class PeerConfig:
    """What `wg set` can say about a peer.

    endpoint None keeps the current (possibly roamed-to) endpoint; allowed_ips replace the old set.
    """

    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)  # a secret: kept out of logs
    endpoint: Endpoint | None = None
    allowed_ips: tuple[Network, ...] = ()
    persistent_keepalive: int = 0  # seconds; 0 is off


@dataclass(frozen=True)
class PeerStatus:
    """What `wg show` reports about a peer. last_handshake is wall-clock Unix time."""

    public_key: bytes
    preshared_key: bytes | None = field(repr=False)
    endpoint: Endpoint | None
    allowed_ips: tuple[Network, ...]
    persistent_keepalive: int
    rx_bytes: int
    tx_bytes: int
    last_handshake: float | None


class Peer:
    __slots__ = ("public_key", "preshared_key", "endpoint", "persistent_keepalive", "static_static",
                 "initiator_start", "cookies", "handshake", "keypairs", "timers", "staged",
                 "rx_bytes", "tx_bytes", "last_handshake", "shard")

    def __init__(self, public_key: bytes, static_static: bytes | None) -> None:
        self.public_key = public_key
        self.preshared_key = noise.NO_PRESHARED_KEY
        self.endpoint: Endpoint | None = None
        self.persistent_keepalive = 0
        # DH(our static, their static) never changes for a pair of keys: computed once
        # (None while the interface has no identity).
        self.static_static = static_static
        self.initiator_start = noise.initiator_start(public_key)
        self.cookies = CookieGenerator(public_key)
        self.handshake = Handshake()
        self.keypairs = Keypairs()
        self.timers = PeerTimers()
        # Packets waiting for a session (an empty one is a keepalive).
        self.staged: collections.deque[Packet] = collections.deque()
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.last_handshake: float | None = None  # on the injected clock
        self.shard = 0  # the process that opens this peer's sessions (Device with shards)
