"""The few IP header fields the core reads from inner packets (untrusted after decryption too)."""

import struct

_U16 = struct.Struct(">H")


def destination_untrusted(packet: bytes | bytearray | memoryview) -> bytes | None:
    """Packed destination address of an IPv4/IPv6 packet, or None if it is neither."""
    n = len(packet)
    if n >= 20 and packet[0] >> 4 == 4:
        return bytes(packet[16:20])  # a dict key: a view of a shell buffer would not hash
    if n >= 40 and packet[0] >> 4 == 6:
        return bytes(packet[24:40])
    return None


def source_and_length_untrusted(packet: bytes) -> tuple[bytes, int] | None:
    """(packed source address, length from the header), or None if the header is not valid.

    The header length may be shorter than the packet (padding) but never longer.
    """
    n = len(packet)
    if n >= 20 and packet[0] >> 4 == 4:
        length = _U16.unpack_from(packet, 2)[0]
        if length < 20 or length > n:
            return None
        return packet[12:16], length
    if n >= 40 and packet[0] >> 4 == 6:
        length = 40 + _U16.unpack_from(packet, 4)[0]
        if length > n:
            return None
        return packet[8:24], length
    return None
