"""overlayctl's text output: no Python values, wide columns, no headers; status exit codes;
the completion tree."""

from __future__ import annotations

import io

from overlayd.cli.completion import command_tree
from overlayd.cli.main import build_parser
from overlayd.cli.output import Column, Style, flatten, print_fields, print_table, text
from overlayd.cli.status import check_line, exit_code


def test_text_never_shows_python_values() -> None:
    assert [text(v) for v in (True, False, None, {}, [], {"a": None, "b": True}, [1, None])] == [
        "yes", "no", "-", "-", "-", "a=-,b=yes", "1,-"]


def test_fields_flatten_nested_records_and_list_items_get_lines() -> None:
    out = io.StringIO()
    print_fields({"ready": True, "trust": {"signing": None, "rejected": {}}, "problems": ["p1", "p2"]}, out)
    assert out.getvalue().splitlines() == [
        "ready           yes", "trust.signing   -", "trust.rejected  -", "problems        p1", "                p2"]
    assert flatten({"a": {"b": {"c": 1}}}) == [("a.b.c", 1)]


def test_tables_wide_and_without_headers() -> None:
    rows, cols = [{"a": "x", "b": "y"}], [Column("a", "A"), Column("b", "B", wide=True)]
    for style, expected in ((Style(), ["A", "x"]), (Style("wide"), ["A  B", "x  y"]),
                            (Style("wide", headers=False), ["x  y"])):
        out = io.StringIO()
        print_table(rows, cols, style, out)
        assert out.getvalue().splitlines() == expected


def test_status_exit_code_and_check_line() -> None:
    assert exit_code({"health": "ok"}) == 0 and exit_code({"health": "degraded"}) == 1
    assert check_line({"ready": True, "health": "ok"}) == ("ok", 0)
    assert check_line({"ready": True, "health": "degraded", "problems": ["lease: x"]}) == ("degraded: lease: x", 1)
    assert check_line({"ready": False, "health": "starting"}) == ("starting", 1)


def test_completion_tree_knows_subcommands_options_and_values() -> None:
    tree = command_tree(build_parser())
    assert list(tree["overlayctl pod"].subcommands) == ["add", "del", "ls", "get", "exec"]
    node = tree["overlayctl network init"]
    assert node.values["--backend"] == ["vxlan", "wireguard", "host-gw"] and node.values["--ca-dir"] == []
    assert "--no-headers" in node.options and "--no-headers" not in node.values
