"""A TCP and UDP server for the NAT tests: answers every connection or datagram with the
address it came from, so a test sees what source address NAT left on the way in."""

import socket
import sys
import threading


def main(port: int) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", port))
    tcp.listen()

    def answer_udp() -> None:
        while True:
            _, peer = udp.recvfrom(512)
            udp.sendto(f"{peer[0]}\n".encode(), peer)

    threading.Thread(target=answer_udp, daemon=True).start()
    print("up", flush=True)
    while True:
        conn, peer = tcp.accept()
        with conn:
            conn.sendall(f"{peer[0]}\n".encode())


def ask(host: str, port: int, protocol: str) -> None:
    """Print the server's answer (the source address it saw), or exit 1."""
    try:
        if protocol == "tcp":
            with socket.create_connection((host, port), timeout=2) as conn:
                print(conn.recv(512).decode().strip())
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(2)
                sock.sendto(b"?", (host, port))
                print(sock.recv(512).decode().strip())
    except OSError as exc:
        print(f"error: {exc}")
        sys.exit(1)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        main(int(sys.argv[2]))
    else:
        ask(sys.argv[2], int(sys.argv[3]), sys.argv[4])
