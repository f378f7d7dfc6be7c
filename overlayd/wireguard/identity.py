"""The interface's static identity: its private key and what is derived from it once."""

from overlayd.wireguard import crypto, noise
from overlayd.wireguard.cookie import CookieChecker
from overlayd.wireguard.errors import InvalidKeyError


class Identity:
    """A plain class (no dataclass repr): nothing here may end up in a log line."""

    __slots__ = ("private_key", "static", "public_key", "cookies", "responder_start")

    def __init__(self, private_key: bytes) -> None:
        self.private_key = crypto.check_key(private_key, "private key")
        self.static = crypto.private_key_object(self.private_key)
        self.public_key = crypto.public_key(self.static)
        self.cookies = CookieChecker(self.public_key)
        self.responder_start = noise.responder_start(self.public_key)

    def static_static(self, peer_public: bytes) -> bytes:
        """DH(our static key, the peer's): fixed for a pair of keys, so computed once per peer."""
        shared = crypto.dh(self.static, peer_public)
        if shared is None:
            raise InvalidKeyError("peer public key is a low-order point")
        return shared
