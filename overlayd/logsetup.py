"""Logging for overlayd and overlayd-wg: plain lines on stderr, or journald's format.

When stderr is connected to the journal (systemd sets JOURNAL_STREAM to the stream's
"device:inode", see systemd.exec(5)), every line starts with a syslog priority such as
"<3>", so `journalctl -p err` finds errors, and carries no timestamp: journald stamps each
line itself. Elsewhere (a terminal, the lab's log files) lines keep their timestamp.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "journal", "text")

# syslog priorities (sd-daemon.h): err 3, warning 4, info 6, debug 7.
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (custom levels round down to the next known one)."""
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


def parse_level(text: str) -> str:
    """A level name in any case -> its canonical lower-case name; ValueError if unknown."""
    level = text.strip().lower()
    if level not in LEVELS:
        raise ValueError(f"log level {text!r}: one of {', '.join(LEVELS)}")
    return level


class JournalFormatter(logging.Formatter):
    """Prefixes every line (a traceback's too) with the record's priority; no timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def stderr_is_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Whether `stream` is the journal stream systemd named in JOURNAL_STREAM."""
    device, sep, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return bool(sep) and (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (ValueError, OSError):  # malformed variable, or a stream without a file descriptor
        return False


def setup_logging(level: str, log_format: str = "auto", *, tag: str = "%(name)s",
                  stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Configure the root logger once for the process. `tag` names the source in each line."""
    stream = stream if stream is not None else sys.stderr
    environ = environ if environ is not None else os.environ
    journal = log_format == "journal" or (log_format == "auto" and stderr_is_journal(stream, environ))
    handler = logging.StreamHandler(stream)
    if journal:
        handler.setFormatter(JournalFormatter(f"{tag}: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {tag}: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(parse_level(level).upper())
