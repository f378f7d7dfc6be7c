"""One harness under hypothesis, in a process of its own; prints one JSON line:

    python3 -m tests.fuzz.hypothesis_worker NAME RUNS SEED SECONDS
    {"runs": 100000, "seconds": 61.2, "crash": null}

Runs in chunks with successive seeds (fresh search state per chunk) until RUNS inputs
are done, the time is up, or a chunk crashes.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from tests.fuzz.engine_hypothesis import run
from tests.fuzz.targets import TARGETS

CHUNK = 5000


def main() -> None:
    name, total, first_seed, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    logging.disable(logging.CRITICAL)
    target = TARGETS[name]
    started = time.monotonic()
    runs, crash, chunk_seed = 0, None, first_seed
    while runs < total and crash is None and time.monotonic() - started < seconds:
        outcome = run(target, min(CHUNK, total - runs), chunk_seed)
        runs += outcome.runs
        crash = outcome.crash
        chunk_seed += 1
    print(json.dumps({"runs": runs, "seconds": round(time.monotonic() - started, 1), "crash": crash}))


if __name__ == "__main__":
    main()
