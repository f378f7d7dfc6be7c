"""Reachability probes the lab runs inside pods (`python -m overlayd.lab.probe`).

`serve PORT` answers every TCP connection with the pod's hostname; `check PORT
IP...` sends one ICMP echo (raw socket, so no ping binary is needed) and opens
one TCP connection to each IP, and prints the results as JSON, one type per field:
{"IP": {"icmp": bool, "tcp": bool, "tcp_hostname": str | null}} (the hostname the
server answered with, null when TCP failed).
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_echo(ip: str, timeout: float, ident: int) -> bool:
    payload = b"overlayd-probe"
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, 1)
    packet = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, _checksum(header + payload), ident, 1) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.sendto(packet, (ip, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            data, (src, _) = sock.recvfrom(2048)
            ihl = (data[0] & 0x0F) * 4
            icmp_type, _, _, reply_ident, _ = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if src == ip and icmp_type == ICMP_ECHO_REPLY and reply_ident == ident:
                return True
    return False


def tcp_hello(ip: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((ip, port), timeout=timeout) as sock:
            return sock.recv(256).decode(errors="replace").strip() or None
    except OSError:
        return None


def check(ips: list[str], port: int, timeout: float = 3.0) -> dict[str, dict[str, object]]:
    def one(item: tuple[int, str]) -> tuple[str, dict[str, object]]:
        n, ip = item
        ident = (os.getpid() + n) & 0xFFFF
        hostname = tcp_hello(ip, port, timeout)
        return ip, {"icmp": icmp_echo(ip, timeout, ident), "tcp": hostname is not None, "tcp_hostname": hostname}

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(ips)))) as pool:
        return dict(pool.map(one, enumerate(ips)))


def serve(port: int) -> None:
    hello = (socket.gethostname() + "\n").encode()
    with socket.create_server(("0.0.0.0", port), reuse_port=False) as server:
        while True:
            conn, _ = server.accept()
            with conn:
                try:
                    conn.sendall(hello)
                except OSError:
                    pass


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "serve":
        serve(int(argv[1]))
        return 0
    if len(argv) >= 2 and argv[0] == "check":
        print(json.dumps(check(argv[2:], int(argv[1]))))
        return 0
    print("usage: probe serve PORT | probe check PORT IP...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
