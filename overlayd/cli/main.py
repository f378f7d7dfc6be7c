"""overlayctl: the command line of overlayd.

One module per subcommand group (pod, service, policy, status, network, lab, ca, completion); each registers
its parsers and handlers here. Global options (--socket, -o/--json, --no-headers) are
accepted anywhere on the line, as kubectl's are. Connection settings come from the flag,
else the environment, else the client config file (settings.py).

Exit codes: 0 ok, 1 failure (also: `status` of a degraded host), 2 bad usage, 126/127 for
`pod exec` of a command that cannot run or is not found.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from overlayd.cli import ca, cni, completion, lab, network, pod, policy, service, status
from overlayd.cli.output import OUTPUT_FORMATS, Style
from overlayd.cli.settings import config_path, load_config_file, resolve
from overlayd.errors import OverlaydError, UsageError
from overlayd.version import version_text

EXIT_ERROR, EXIT_USAGE = 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line, exit 2
        self.exit(EXIT_USAGE, f"overlayctl: error: {message}\n")


def add_global_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every overlayctl command takes, wherever they stand on the line.

    Added to the top parser and to every subparser with default=SUPPRESS, so a subparser
    that did not see the option does not overwrite what an earlier position set.
    """
    group = parser.add_argument_group("global options")
    group.add_argument("--socket", type=Path, default=argparse.SUPPRESS,
                       help="control socket of the daemon (env OVERLAYCTL_SOCKET; default /run/overlayd/overlayd.sock)")
    group.add_argument("-o", "--output", choices=OUTPUT_FORMATS, default=argparse.SUPPRESS,
                       help="output format: table (default), wide (more columns) or json")
    group.add_argument("--json", dest="output", action="store_const", const="json", default=argparse.SUPPRESS,
                       help="same as -o json")
    group.add_argument("--no-headers", action="store_true", default=argparse.SUPPRESS,
                       help="print tables without their header line")


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below this one."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
                found += [child, *_subparsers(child)]
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="overlayctl", description="Drive an overlayd daemon and the overlayd lab.")
    parser.add_argument("--version", action="version", version=version_text("overlayctl"),
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    for module in (status, pod, service, policy, network, lab, ca, cni, completion):
        module.register(sub)
    for p in [parser, *_subparsers(parser)]:
        add_global_arguments(p)
    return parser


def _apply_settings(args: argparse.Namespace) -> None:
    """Fill in what the line left out: connection settings, output style."""
    path, required = config_path(os.environ)
    file_values = load_config_file(path, required=required)
    for dest, value in resolve(vars(args), os.environ, file_values).items():
        setattr(args, dest, value)
    args.style = Style(output=getattr(args, "output", "table"), headers=not getattr(args, "no_headers", False))
    args.json = args.style.json


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Everything after the first "--" is a command to run (`pod exec`), as with kubectl:
    split it off first, so options may stand anywhere before it."""
    head, dash, command = argv, False, []
    if "--" in argv:
        at = argv.index("--")
        head, dash, command = argv[:at], True, argv[at + 1:]
    args = parser.parse_args(head)
    if getattr(args, "takes_command", False):
        args.cmd = command
    elif dash:
        parser.error(f"unexpected arguments after --: {' '.join(command)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="overlayctl: %(message)s")
    try:
        _apply_settings(args)
        return int(args.handler(args) or 0)
    except UsageError as exc:
        print(f"overlayctl: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OverlaydError as exc:
        print(f"overlayctl: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `overlayctl pod ls | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
