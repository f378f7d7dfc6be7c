"""One harness under atheris (coverage-guided libFuzzer), in a process of its own:

    python3 -m tests.fuzz.atheris_worker NAME [libFuzzer flags...] CORPUS_DIR

libFuzzer exits the process when done; the caller reads its summary from stderr.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import atheris

import overlayd


def main() -> None:
    name = sys.argv[1]
    logging.disable(logging.CRITICAL)  # refused input is logged by some parsers; noise here
    # Coverage feedback from our own code only (the standard library and C extensions stay plain).
    # Not from the WireGuard package: atheris 2.3's bytecode rewriting changes its behaviour on
    # Python 3.11 (locals clobbered: false crashes), so it runs uninstrumented, fuzzed by mutation.
    wireguard = [f"overlayd.wireguard.{p.stem}" for p in Path(overlayd.__file__).parent.glob("wireguard/*.py")]
    with atheris.instrument_imports(include=["overlayd", "ipam"], exclude=["overlayd.wireguard", *wireguard]):
        from tests.fuzz.targets import TARGETS
    target = TARGETS[name]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target.run)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
