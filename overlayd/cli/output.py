"""Rendering for overlayctl: readable tables and fields by default, JSON with -o json.

Text never shows Python values: booleans are yes/no, nothing is "-", nested
records become dotted keys (fields) or key=value lists (table cells).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

OUTPUT_FORMATS = ("table", "wide", "json")


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    wide: bool = False  # shown with -o wide only


@dataclass(frozen=True)
class Style:
    """How the user asked for output: -o table|wide|json and --no-headers."""

    output: str = "table"
    headers: bool = True

    @property
    def json(self) -> bool:
        return self.output == "json"

    @property
    def wide(self) -> bool:
        return self.output == "wide"


def print_json(value: Any, out: TextIO = sys.stdout) -> None:
    json.dump(value, out, indent=2, sort_keys=True)
    out.write("\n")


def text(value: Any) -> str:
    """One value as table text."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={text(v)}" for k, v in sorted(value.items())) or "-"
    if isinstance(value, (list, tuple)):
        return ",".join(text(v) for v in value) or "-"
    return str(value)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column | tuple[str, str]],
                style: Style = Style(), out: TextIO = sys.stdout) -> None:
    cols = [c if isinstance(c, Column) else Column(*c) for c in columns]
    cols = [c for c in cols if style.wide or not c.wide]
    cells = [[text(row.get(c.key)) for c in cols] for row in rows]
    headers = [c.header for c in cols]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for line in ([headers] if style.headers else []) + cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() + "\n")


def flatten(record: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested records as dotted keys: {"trust": {"signing": None}} -> [("trust.signing", None)]."""
    items: list[tuple[str, Any]] = []
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            items += flatten(value, name + ".")
        else:
            items.append((name, value))
    return items


def print_fields(record: Mapping[str, Any], out: TextIO = sys.stdout) -> None:
    """KEY  VALUE lines; a list of strings (e.g. problems) gets one line per item."""
    items = flatten(record)
    width = max((len(k) for k, _ in items), default=0)
    for key, value in items:
        lines = [text(v) for v in value] if isinstance(value, (list, tuple)) and value else [text(value)]
        out.write(f"{key.ljust(width)}  {lines[0]}\n")
        for line in lines[1:]:
            out.write(f"{''.ljust(width)}  {line}\n")


def emit(value: Any, style: Style, *, columns: Sequence[Column] | None = None) -> None:
    """JSON as is, else a table (a list with columns) or fields (a record)."""
    if style.json:
        print_json(value)
    elif columns is not None:
        print_table(value, columns, style)
    else:
        print_fields(value)
