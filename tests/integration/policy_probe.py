"""Servers and probers for the network policy tests, run inside pod namespaces.

    serve PORT...            TCP and UDP on every port, answering "ok"; prints "up"
    probe TIMEOUT JSON       JSON: [[address, port, "tcp"|"udp"], ...]; tries them all at once and
                             prints a JSON list of booleans (reached or not), in the same order

A TCP probe succeeds when the connection is accepted; a UDP probe when an answer comes back
(the datagram is sent again every 0.2 s until the timeout, so a lost packet is not a deny).
"""

import json
import socket
import sys
import threading
import time


def serve(ports: list[int]) -> None:
    def answer_udp(sock: socket.socket) -> None:
        while True:
            _, peer = sock.recvfrom(512)
            sock.sendto(b"ok", peer)

    def answer_tcp(sock: socket.socket) -> None:
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn:
            conn.sendall(b"ok\n")
            while data := conn.recv(512):
                conn.sendall(data)

    for port in ports:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("0.0.0.0", port))
        threading.Thread(target=answer_udp, args=(udp,), daemon=True).start()
        tcp = socket.socket()
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("0.0.0.0", port))
        tcp.listen(256)
        threading.Thread(target=answer_tcp, args=(tcp,), daemon=True).start()
    print("up", flush=True)
    threading.Event().wait()


def _probe(address: str, port: int, protocol: str, timeout: float) -> bool:
    try:
        if protocol == "tcp":
            with socket.create_connection((address, port), timeout=timeout):
                return True
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                sock.sendto(b"?", (address, port))
                try:
                    return sock.recv(16) == b"ok"
                except socket.timeout:
                    continue
    except OSError:
        return False
    return False


def probe(timeout: float, targets: list[list]) -> None:
    results = [False] * len(targets)

    def one(i: int) -> None:
        address, port, protocol = targets[i]
        results[i] = _probe(address, int(port), protocol, timeout)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(targets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve([int(p) for p in sys.argv[2:]])
    else:
        probe(float(sys.argv[2]), json.loads(sys.argv[3]))
