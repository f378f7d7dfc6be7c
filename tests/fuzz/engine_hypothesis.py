"""Run a harness under hypothesis: random bytes and mutated seeds, derandomized by a fixed seed."""

from __future__ import annotations

import traceback
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.fuzz.targets import Target

_MUTATIONS = ("flip", "insert", "delete", "replace", "truncate", "duplicate")


def _mutate(original: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(original)
    for how, position, value in edits:
        at = position % (len(data) + 1)
        if how == "flip" and data:
            data[at % len(data)] ^= 1 << (value % 8)
        elif how == "insert":
            data[at:at] = bytes([value])
        elif how == "delete" and data:
            del data[at % len(data)]
        elif how == "replace" and data:
            data[at % len(data)] = value
        elif how == "truncate":
            del data[at:]
        elif how == "duplicate":
            data[at:at] = data[at : at + value % 32]
    return bytes(data)


def inputs(target: Target) -> st.SearchStrategy[bytes]:
    seeds = target.seeds()
    edits = st.lists(st.tuples(st.sampled_from(_MUTATIONS), st.integers(0, target.max_len), st.integers(0, 255)),
                     min_size=1, max_size=6)
    return st.one_of(
        st.binary(max_size=target.max_len),
        st.builds(_mutate, st.sampled_from(seeds), edits),
        st.builds(lambda a, b, cut: a[:cut] + b[cut:], st.sampled_from(seeds), st.sampled_from(seeds),
                  st.integers(0, 256)),  # splice two genuine inputs
    )


@dataclass(frozen=True)
class Outcome:
    runs: int
    crash: str | None  # the failure hypothesis reports (shrunk input and traceback)


def run(target: Target, examples: int, chunk_seed: int) -> Outcome:
    runs = 0

    @seed(chunk_seed)
    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink], report_multiple_bugs=False)
    @given(inputs(target))
    def harness(data: bytes) -> None:
        nonlocal runs
        runs += 1
        target.run(data)

    try:
        harness()
    except Exception as exc:
        notes = "\n".join(getattr(exc, "__notes__", ()))
        return Outcome(runs, f"{notes}\n{''.join(traceback.format_exception(exc))}")
    return Outcome(runs, None)
