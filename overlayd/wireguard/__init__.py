"""Sans-I/O WireGuard core: Noise_IKpsk2 handshake, cookies, transport data, timers, cryptokey routing.

The I/O shell (TUN + UDP) and the UAPI server drive a `Device`; see device.py for the contract.
"""

from overlayd.wireguard.device import Device
from overlayd.wireguard.events import Datagram, DatagramBatch, DropReason, Endpoint, Output, TunPacket
from overlayd.wireguard.peer import PeerConfig, PeerStatus

__all__ = ["Datagram", "DatagramBatch", "Device", "DropReason", "Endpoint", "Output", "PeerConfig", "PeerStatus",
           "TunPacket"]
