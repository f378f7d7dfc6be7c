"""Errors the WireGuard core raises on purpose (bad configuration or misuse, never bad packets).

Untrusted packets never raise: they are dropped and counted (see events.DropReason).
"""

from overlayd.errors import ConfigError, NotFoundError, OverlaydError


class WireGuardError(OverlaydError):
    """Base of the WireGuard core's errors."""


class InvalidKeyError(WireGuardError, ConfigError):
    """A key has the wrong length or is unusable (e.g. a low-order public key)."""


class InvalidConfigError(WireGuardError, ConfigError):
    """A peer or interface setting is out of range."""


class UnknownPeerError(WireGuardError, NotFoundError):
    """No peer with this public key is configured."""


class HandshakeStateError(WireGuardError):
    """A handshake step was attempted in a state that does not allow it (a bug in the caller)."""


class UntrustedSocketError(WireGuardError):
    """The UAPI socket is held by a process that is neither root nor us, or lies in a
    directory that others can write: nothing (least of all a private key) is sent to it."""
