"""The installed version of overlayd, for `--version` on every command.

Read from the package metadata, so pyproject.toml is the one place it is written.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def overlayd_version() -> str:
    try:
        return version("overlayd")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def version_text(prog: str) -> str:
    return f"{prog} {overlayd_version()}"
