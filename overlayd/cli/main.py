"""overlayctl: the command line of overlayd.

One module per subcommand group (pod, status, network, lab); each registers its
parsers and handlers here. Exit codes: 0 ok, 1 failure, 2 bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from overlayd.cli import ca, cni, lab, network, pod, status
from overlayd.errors import OverlaydError, UsageError

DEFAULT_SOCKET = Path("/run/overlayd/overlayd.sock")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line, exit 2
        self.exit(2, f"overlayctl: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="overlayctl", description="Drive an overlayd daemon and the overlayd lab.")
    parser.add_argument("--socket", type=Path, default=DEFAULT_SOCKET,
                        help=f"control socket of the daemon to talk to (default {DEFAULT_SOCKET})")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in (status, pod, network, lab, ca, cni):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="overlayctl: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:
        print(f"overlayctl: error: {exc}", file=sys.stderr)
        return 2
    except OverlaydError as exc:
        print(f"overlayctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `overlayctl pod ls | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
