"""overlayd-wg: a userspace WireGuard interface, run and configured like wireguard-go.

    overlayd-wg [-f] [--socket-dir DIR] [--mtu N] [--no-offload] [--workers N] [--busy-poll-us US] IFNAME

creates the TUN interface IFNAME (MTU 1420, down, no addresses: bring it up with `ip`), serves
the UAPI socket DIR/IFNAME.sock (default /var/run/wireguard, or $WG_SOCKET_DIR) and runs until
SIGTERM or SIGINT, then removes the socket and the interface. It always stays in the
foreground (-f is accepted for wireguard-go compatibility). Configure it with `wg`:

    wg set IFNAME private-key /path/key listen-port 51820 peer PUBKEY endpoint 198.18.1.2:51820 \\
        allowed-ips 10.99.0.2/32
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from overlayd import sdnotify
from overlayd.errors import OverlaydError
from overlayd.logsetup import FORMATS, LEVELS, parse_level, setup_logging
from overlayd.version import version_text
from overlayd.wireguard.engine import DEFAULT_BUSY_POLL, Engine
from overlayd.wireguard.tun import TunDevice, check_ifname
from overlayd.wireguard.uapi_server import UapiServer, default_socket_dir, socket_path

DEFAULT_MTU = 1420
EXIT_ERROR = 1
EXIT_USAGE = 2
MAX_BUSY_POLL_US = 100_000
MAX_WORKERS = 64  # steering uses a byte of the session index: at most 256, and cores run out first

log = logging.getLogger("overlayd-wg")


def _level(text: str) -> str:
    try:
        return parse_level(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overlayd-wg", description="Userspace WireGuard interface, configured with `wg` like wireguard-go."
    )
    parser.add_argument("--version", action="version", version=version_text("overlayd-wg"),
                        help="print the version and exit")
    parser.add_argument("ifname", metavar="IFNAME", help="name of the TUN interface to create")
    parser.add_argument("-f", "--foreground", action="store_true", help="run in the foreground (always the case)")
    parser.add_argument("--socket-dir", type=Path, default=None,
                        help=f"UAPI socket directory (default $WG_SOCKET_DIR or {default_socket_dir()})")
    parser.add_argument("--mtu", type=int, default=DEFAULT_MTU, help=f"interface MTU (default {DEFAULT_MTU})")
    parser.add_argument("--no-offload", dest="offload", action="store_false",
                        help="plain TUN without TSO/GRO (one packet per read and write)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes sharing the data path (a multi-queue TUN device and a reuseport "
                             "socket each); flows spread over them by flow, sessions by peer (default 1)")
    parser.add_argument("--busy-poll-us", type=int, default=round(DEFAULT_BUSY_POLL * 1e6), metavar="US",
                        help="after a lone packet, keep polling this long before sleeping: lower latency "
                             f"for CPU after each packet (default {round(DEFAULT_BUSY_POLL * 1e6)}: off; e.g. 1000)")
    parser.add_argument("--log-level", default="info", type=_level, help=f"{', '.join(LEVELS)} (any case)")
    parser.add_argument("--log-format", default="auto", choices=FORMATS,
                        help="auto: journald priorities and no timestamps when stderr is the journal")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format, tag="overlayd-wg[%(process)d]")
    try:
        check_ifname(args.ifname)
    except OverlaydError as e:
        print(f"overlayd-wg: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not 576 <= args.mtu <= 65535:
        print("overlayd-wg: --mtu must be 576..65535", file=sys.stderr)
        return EXIT_USAGE
    if not 1 <= args.workers <= MAX_WORKERS:
        print(f"overlayd-wg: --workers must be 1..{MAX_WORKERS}", file=sys.stderr)
        return EXIT_USAGE
    if not 0 <= args.busy_poll_us <= MAX_BUSY_POLL_US:
        print(f"overlayd-wg: --busy-poll-us must be 0..{MAX_BUSY_POLL_US}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return run(args.ifname, socket_path(args.ifname, args.socket_dir), mtu=args.mtu, offload=args.offload,
                   busy_poll=args.busy_poll_us / 1e6, workers=args.workers)
    except OverlaydError as e:
        print(f"overlayd-wg: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:  # e.g. a socket dir that cannot be made
        print(f"overlayd-wg: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return EXIT_ERROR


def run(ifname: str, path: Path, *, mtu: int, offload: bool, busy_poll: float = DEFAULT_BUSY_POLL,
        workers: int = 1) -> int:
    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    signal.set_wakeup_fd(wake_w)  # a signal wakes the accept loop, which then shuts down
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: None)
    queues = TunDevice.create_queues(ifname, workers, offload=offload) if workers > 1 \
        else [TunDevice.create(ifname, offload=offload)]
    tun = queues[0]
    try:
        tun.mtu = mtu
        engine = Engine(tun, worker_queues=queues[1:], busy_poll=busy_poll)
        server = UapiServer(path, engine)
        try:
            engine.start()  # forks the workers first: they must not inherit the UAPI socket
            server.open()
            log.info("interface %s up (offload %s, %d worker%s), UAPI on %s", tun.name, "on" if offload else "off",
                     workers, "" if workers == 1 else "s", path)
            sdnotify.notify("READY=1")
            server.serve_until(wake_r)
            log.info("shutting down; counters: %s", engine.counters())
        finally:
            server.close()
            engine.stop()
    finally:
        for queue in queues:
            queue.close()  # the interface disappears with its last file descriptor
    if engine.failure is not None:
        print(f"overlayd-wg: {engine.failure}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
