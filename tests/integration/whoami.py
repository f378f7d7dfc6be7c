"""A TCP and UDP server for the service tests: answers every connection or datagram with
"<name> <client address>" (the name it was started with), so a test sees which pod a VIP led to and what source
address arrived. `ask` makes many connections and prints one answer per line."""

import socket
import sys
import threading


def serve(port: int, me: str) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", port))
    tcp.listen(128)

    def answer_udp() -> None:
        while True:
            _, peer = udp.recvfrom(512)
            udp.sendto(f"{me} {peer[0]}\n".encode(), peer)

    threading.Thread(target=answer_udp, daemon=True).start()
    print("up", flush=True)
    def answer_tcp(conn: socket.socket, peer: tuple[str, int]) -> None:
        with conn:  # the greeting, then an echo until the client closes (long-lived connections)
            conn.sendall(f"{me} {peer[0]}\n".encode())
            while data := conn.recv(512):
                conn.sendall(data)

    while True:
        conn, peer = tcp.accept()
        threading.Thread(target=answer_tcp, args=(conn, peer), daemon=True).start()


def ask(host: str, port: int, protocol: str, count: int) -> None:
    """One line per attempt: the answer, or "error: ..." (exit status 0 either way)."""
    for _ in range(count):
        try:
            if protocol == "tcp":
                with socket.create_connection((host, port), timeout=2) as conn:
                    print(conn.recv(512).decode().strip(), flush=True)
            else:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(2)
                    sock.sendto(b"?", (host, port))
                    print(sock.recv(512).decode().strip(), flush=True)
        except OSError as exc:
            print(f"error: {exc.strerror or exc}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    else:
        ask(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else 1)
