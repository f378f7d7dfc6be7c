"""The long fuzz run, outside the default test run:

    python3 -m tests.fuzz --total 1000000 [--time-limit 900] [--engine auto] [--jobs 2] [--only NAME...]

Splits --total inputs evenly over the harnesses and runs them --jobs at a time, each in its own
process, under atheris (coverage-guided; `pip install atheris`) or else hypothesis. Prints the
inputs run per harness and in total; exits 1 if any harness crashed, 2 if the time limit
stopped the run short of --total.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz.targets import TARGETS


@dataclass(frozen=True)
class Result:
    name: str
    runs: int
    seconds: float
    crash: str | None


def _atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def _atheris_command(name: str, runs: int, seconds: float, seed: int, workdir: Path) -> list[str]:
    corpus = workdir / name / "corpus"
    corpus.mkdir(parents=True)
    for index, data in enumerate(TARGETS[name].seeds()):
        (corpus / f"seed-{index}").write_bytes(data)
    return [sys.executable, "-m", "tests.fuzz.atheris_worker", name, f"-runs={runs}", f"-seed={seed}",
            f"-max_len={TARGETS[name].max_len}", "-len_control=0", f"-max_total_time={max(1, int(seconds))}", "-timeout=10",
            "-rss_limit_mb=2048", "-print_final_stats=1", f"-artifact_prefix={workdir / name}/", str(corpus)]


def _atheris_result(name: str, output: str, seconds: float) -> Result:
    executed = re.search(r"stat::number_of_executed_units:\s*(\d+)", output)
    progress = re.findall(r"^#(\d+)\s", output, re.MULTILINE)
    runs = int(executed.group(1)) if executed else int(progress[-1]) if progress else 0
    crash = None
    if "Uncaught Python exception" in output or "ERROR: libFuzzer" in output:
        start = output.find("=== Uncaught Python exception")
        crash = output[start if start >= 0 else 0:][:6000]
    return Result(name, runs, seconds, crash)


def _hypothesis_command(name: str, runs: int, seconds: float, seed: int) -> list[str]:
    return [sys.executable, "-m", "tests.fuzz.hypothesis_worker", name, str(runs), str(seed), str(seconds)]


def _hypothesis_result(name: str, output: str, seconds: float) -> Result:
    lines = [line for line in output.splitlines() if line.startswith("{")]
    if not lines:
        return Result(name, 0, seconds, f"worker printed no result:\n{output[-4000:]}")
    report = json.loads(lines[-1])
    return Result(name, report["runs"], report["seconds"], report["crash"])


def run_all(names: list[str], total: int, time_limit: float, engine: str, jobs: int, seed: int) -> list[Result]:
    per_target = math.ceil(total / len(names))
    # Each harness gets an equal share of the wall-clock budget (jobs run side by side).
    seconds = time_limit * jobs / len(names)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="overlayd-fuzz-") as tmp:
        workdir = Path(tmp)
        pending = list(names)
        running: list[tuple[str, subprocess.Popen[str], float, Path]] = []
        while pending or running:
            while pending and len(running) < jobs:
                name = pending.pop(0)
                log = workdir / f"{name}.log"
                cmd = (_atheris_command(name, per_target, seconds, seed, workdir) if engine == "atheris"
                       else _hypothesis_command(name, per_target, seconds, seed))
                with log.open("w") as out:
                    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True,
                                            cwd=Path(__file__).resolve().parents[2])
                running.append((name, proc, time.monotonic(), log))
            time.sleep(0.2)
            for entry in list(running):
                name, proc, started, log = entry
                if proc.poll() is None:
                    # libFuzzer enforces its own time limit; this is the backstop for a hung worker.
                    if time.monotonic() - started > seconds + 120:
                        proc.kill()
                        proc.wait()
                    else:
                        continue
                running.remove(entry)
                output = log.read_text(errors="replace")
                elapsed = round(time.monotonic() - started, 1)
                parse = _atheris_result if engine == "atheris" else _hypothesis_result
                result = parse(name, output, elapsed)
                if result.crash is None and proc.returncode != 0:
                    result = Result(name, result.runs, elapsed, f"worker exited {proc.returncode}:\n{output[-4000:]}")
                results.append(result)
                print(f"{name:18} {result.runs:>10,} inputs {elapsed:>7.1f}s  "
                      f"{'CRASH' if result.crash else 'ok'}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total", type=int, default=1_000_000, help="inputs over all harnesses (default 1,000,000)")
    parser.add_argument("--time-limit", type=float, default=900.0, help="wall-clock seconds for the whole run")
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="harnesses run at once")
    parser.add_argument("--seed", type=int, default=1, help="fixed seed: the same run finds the same inputs")
    parser.add_argument("--only", nargs="+", choices=sorted(TARGETS), help="run only these harnesses")
    args = parser.parse_args(argv)
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if _atheris_available() else "hypothesis"
    names = args.only or list(TARGETS)
    print(f"fuzzing {len(names)} harnesses with {engine}, {args.total:,} inputs, "
          f"at most {args.time_limit:g}s, {args.jobs} at a time", flush=True)
    started = time.monotonic()
    results = run_all(names, args.total, args.time_limit, engine, max(1, args.jobs), args.seed)
    total = sum(r.runs for r in results)
    crashes = [r for r in results if r.crash]
    print(f"total: {total:,} inputs in {time.monotonic() - started:.1f}s, {len(crashes)} crashing harness(es)")
    for result in crashes:
        print(f"\n--- crash in {result.name} ---\n{result.crash}")
    if crashes:
        return 1
    if total < args.total:
        print(f"time limit reached: {total:,} of {args.total:,} inputs run")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
