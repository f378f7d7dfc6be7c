"""Rendering for overlayctl: readable tables by default, JSON with --json."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO


def print_json(value: Any, out: TextIO = sys.stdout) -> None:
    json.dump(value, out, indent=2, sort_keys=True)
    out.write("\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]],
                out: TextIO = sys.stdout) -> None:
    """columns: (key in row, header)."""
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    headers = [header for _, header in columns]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for line in [headers] + cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() + "\n")


def print_fields(record: Mapping[str, Any], out: TextIO = sys.stdout) -> None:
    width = max((len(k) for k in record), default=0)
    for key, value in record.items():
        out.write(f"{key.ljust(width)}  {_cell(value)}\n")
