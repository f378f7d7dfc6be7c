"""The least a Python tunnel can do per packet, as a yardstick for overlayd-wg's latency.

    python -m tests.integration.python_relay IFNAME LOCAL_IP REMOTE_IP PORT

A TUN device (no offloads) and a UDP socket in one poll loop: a packet read from TUN is sealed
with ChaCha20-Poly1305 under a fixed key and sent to REMOTE_IP:PORT; a datagram received is
opened and written to TUN. No handshake, timers, replay window, routing or counters: it is
NOT a VPN, and nothing but benchmarks (bench_wireguard's "relay" kind) may run it. What it
costs per packet is the floor for any engine written in Python on the same machine.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from overlayd.wireguard.tun import TunDevice

KEY = bytes(range(32))  # fixed and public: a yardstick, not a secret
_COUNTER = struct.Struct("<Q")


def serve(tun: TunDevice, sock: socket.socket, remote: tuple[str, int]) -> None:
    aead = ChaCha20Poly1305(KEY)
    poller = select.poll()
    poller.register(tun.fd, select.POLLIN)
    poller.register(sock.fileno(), select.POLLIN)
    counter = 0
    while True:
        for fd, _ in poller.poll():
            if fd == tun.fd:
                packet = os.read(tun.fd, 65536)
                counter += 1
                header = _COUNTER.pack(counter)
                sock.sendto(header + aead.encrypt(b"\0\0\0\0" + header, packet, None), remote)
            else:
                data = sock.recv(65536)
                try:
                    os.write(tun.fd, aead.decrypt(b"\0\0\0\0" + data[:8], data[8:], None))
                except Exception:  # forged, or TUN not up yet: a yardstick drops it
                    pass


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    ifname, local, remote, port = argv[0], argv[1], argv[2], int(argv[3])
    tun = TunDevice.create(ifname, offload=False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((local, port))
    print("ready", flush=True)
    try:
        serve(tun, sock, (remote, port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
