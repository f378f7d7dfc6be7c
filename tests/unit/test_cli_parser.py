"""The commands' argparse trees: every argument explained (overlayctl, overlayd, overlayd-wg),
overlayctl's global options anywhere, "--" splitting."""

from __future__ import annotations

import argparse

import pytest

from overlayd import daemon
from overlayd.cli.main import _subparsers, build_parser, parse
from overlayd.wireguard import cli as wg_cli


def _all_parsers() -> list[argparse.ArgumentParser]:
    top = build_parser()
    return [top, *_subparsers(top), daemon.build_parser(), wg_cli.build_parser()]


def test_every_argument_and_subcommand_has_help_text() -> None:
    missing = []
    for parser in _all_parsers():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {c.dest for c in action._choices_actions if c.help}
                missing += [f"{parser.prog} {name}" for name in action.choices if name not in helped]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


@pytest.mark.parametrize("argv", [
    ["--socket", "/s", "-o", "json", "pod", "ls"],
    ["pod", "ls", "--socket", "/s", "--json"],
    ["pod", "--json", "ls", "--socket", "/s"],
])
def test_global_options_are_the_same_wherever_they_stand(argv: list[str]) -> None:
    args = parse(build_parser(), argv)
    assert (str(args.socket), args.output, args.handler.__name__) == ("/s", "json", "_ls")


def test_an_option_given_early_is_not_reset_by_a_later_parser() -> None:
    args = parse(build_parser(), ["--no-headers", "--socket", "/early", "pod", "ls"])
    assert args.no_headers is True and str(args.socket) == "/early"


def test_words_after_dash_dash_are_the_command_of_pod_exec_only() -> None:
    args = parse(build_parser(), ["pod", "exec", "web", "--socket", "/s", "--", "ls", "--json", "--"])
    assert (args.name, args.cmd, str(args.socket)) == ("web", ["ls", "--json", "--"], "/s")
    with pytest.raises(SystemExit) as exc:
        parse(build_parser(), ["pod", "ls", "--", "x"])
    assert exc.value.code == 2
