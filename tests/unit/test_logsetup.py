"""Log lines: journald priorities when stderr is the journal, any-case levels (logsetup.py)."""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.config import config_from_mapping
from overlayd.errors import ConfigError
from overlayd.logsetup import parse_level, priority, setup_logging, stderr_is_journal


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_levels_map_to_syslog_priorities() -> None:
    assert [priority(level) for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO,
                                          logging.DEBUG, 5)] == [2, 3, 4, 6, 7, 7]


@pytest.mark.parametrize("text", ["info", "INFO", "Info", " info "])
def test_levels_accept_any_case(text: str) -> None:
    assert parse_level(text) == "info"
    assert config_from_mapping({"node_name": "h1", "log_level": text.strip()}).log_level == "info"


def test_unknown_level_and_format_are_one_clear_error() -> None:
    with pytest.raises(ValueError, match="one of debug, info, warning, error"):
        parse_level("loud")
    with pytest.raises(ConfigError, match="log_format 'xml'"):
        config_from_mapping({"node_name": "h1", "log_format": "XML"})


def test_journal_is_recognised_by_device_and_inode_of_the_stream() -> None:
    with tempfile.TemporaryFile("w") as stream:
        st = os.fstat(stream.fileno())
        assert stderr_is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": "garbage"})
        assert not stderr_is_journal(stream, {})
    assert not stderr_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})  # no file descriptor


def test_journal_lines_carry_priorities_and_no_timestamp(tmp_path: Path) -> None:
    with (tmp_path / "err").open("w+") as stream:
        st = os.fstat(stream.fileno())
        setup_logging("DEBUG", stream=stream, environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        log = logging.getLogger("overlayd.test")
        log.error("broken\nsecond line")
        log.info("fine")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed")
        stream.seek(0)
        lines = stream.read().splitlines()
    assert lines[:3] == ["<3>overlayd.test: broken", "<3>second line", "<6>overlayd.test: fine"]
    assert all(line.startswith("<3>") for line in lines[3:]) and "<3>RuntimeError: boom" in lines


def test_text_lines_keep_their_timestamp_outside_the_journal() -> None:
    stream = io.StringIO()
    setup_logging("info", "auto", stream=stream, environ={})
    logging.getLogger("overlayd").warning("careful")
    assert stream.getvalue().split(" ", 2)[2] == "WARNING overlayd: careful\n"  # date, time, then the rest


def test_journal_format_can_be_forced() -> None:
    stream = io.StringIO()
    setup_logging("info", "journal", tag="overlayd-wg[%(process)d]", stream=stream, environ={})
    logging.getLogger("x").warning("careful")
    assert stream.getvalue() == f"<4>overlayd-wg[{os.getpid()}]: careful\n"

