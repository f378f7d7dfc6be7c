"""Ethernet MAC addresses: validation of untrusted text, random and derived local addresses."""

from __future__ import annotations

import ipaddress
import random
import re

from overlayd.errors import ConfigError

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def parse_mac_untrusted(text: object) -> str:
    """Return `text` as a lower-case unicast MAC, or raise ConfigError.

    Multicast and all-zero addresses are refused: as a VTEP address they would turn
    a unicast FDB entry into a flood entry.
    """
    if not isinstance(text, str):
        raise ConfigError(f"MAC address: expected a string, got {type(text).__name__}")
    mac = text.strip().lower()
    if not _MAC_RE.match(mac):
        raise ConfigError(f"MAC address {text!r}: expected six colon-separated hex octets")
    first = int(mac[:2], 16)
    if first & 0x01:
        raise ConfigError(f"MAC address {mac}: multicast, a VTEP needs a unicast address")
    if mac == "00:00:00:00:00:00":
        raise ConfigError("MAC address 00:00:00:00:00:00 is not a usable address")
    return mac


def random_local_mac(rng: random.Random) -> str:
    """A random locally administered unicast MAC (never clashes with a vendor's)."""
    octets = bytearray(rng.getrandbits(8) for _ in range(6))
    octets[0] = (octets[0] & 0xFC) | 0x02  # clear multicast bit, set "locally administered"
    return ":".join(f"{b:02x}" for b in octets)


def gateway_mac(gateway: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The pod bridge's MAC, derived from its gateway address: 0a:58 and the address's last
    four bytes (OVN-Kubernetes' convention). A bridge recreated for the same subnet gets the
    same MAC, so the gateway entries pods have cached stay right and their traffic goes on."""
    return ":".join(f"{b:02x}" for b in (0x0A, 0x58, *gateway.packed[-4:]))
