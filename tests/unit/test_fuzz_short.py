"""A short pass of every fuzz harness (tests/fuzz/targets.py) inside the default test run.

Hypothesis, fixed seed: random bytes, mutated and spliced genuine inputs. Each harness lets
only its parser's documented exceptions pass; anything else fails here with the shrunk input.
The long run is `python3 -m tests.fuzz --total 1000000`.
"""

from __future__ import annotations

import logging

import pytest

from tests.fuzz.engine_hypothesis import run
from tests.fuzz.targets import TARGETS

EXAMPLES = 150


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_harness_survives_a_short_fuzz(name: str) -> None:
    logging.disable(logging.CRITICAL)  # parsers log what they refuse; thousands of lines here
    try:
        outcome = run(TARGETS[name], EXAMPLES, chunk_seed=20261123)
    finally:
        logging.disable(logging.NOTSET)
    assert outcome.crash is None, outcome.crash
    assert outcome.runs >= EXAMPLES // 2  # hypothesis really ran it (it may stop early on a tiny space)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_seed_is_accepted_input(name: str) -> None:
    """The seeds run clean, so mutations start from genuine inputs, not from crashes."""
    target = TARGETS[name]
    for data in target.seeds():
        target.run(data)


def test_a_harness_reports_an_unexpected_exception() -> None:
    """The engine catches what a harness lets through (the check can fail)."""
    from dataclasses import replace

    def broken(data: bytes) -> None:
        if len(data) > 3:
            raise KeyError("boom")

    outcome = run(replace(TARGETS["host_record"], run=broken), 200, chunk_seed=1)
    assert outcome.crash is not None and "KeyError" in outcome.crash
