"""Running nft: read our table and the forward chains, write changes in one transaction.

We drive the `nft` command (`nft -f -` with generated text, `nft -j` to read) rather than
libnftables: its Python binding (python3-nftables) is a Debian package, not on PyPI, so a
venv cannot depend on it, while the nft binary comes with the same package set everywhere
nftables runs. One `nft -f -` file is one kernel transaction, so a change is atomic. Runs
in the calling thread's network namespace (the daemon's), and blocks: call it off the trio
thread.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import dataclass

from overlayd.errors import ConflictError, KernelError
from overlayd.nat import ruleset
from overlayd.nat.ruleset import NatSpec

log = logging.getLogger(__name__)

NFT_TIMEOUT = 10.0  # seconds: nft answers in milliseconds; longer means something hangs


@dataclass(frozen=True)
class NatResult:
    replaced: bool  # our table was (re)written; False: the kernel had it already (adopted)
    holes: tuple[str, ...]  # commands run on other tables' forward chains


def _nft(*args: str, stdin: str | None = None) -> str:
    binary = shutil.which("nft")
    if binary is None:
        raise KernelError("nft not found: install nftables (egress NAT and published ports need it)")
    try:
        done = subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, timeout=NFT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise KernelError(f"nft {' '.join(args)}: no answer in {NFT_TIMEOUT:g}s") from None
    except OSError as exc:  # could not run it at all: an error like any other, not the daemon's end
        raise KernelError(f"nft {' '.join(args)}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        raise KernelError(f"nft {' '.join(args)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


def list_table(name: str) -> str | None:
    """`nft list table inet <name>`, None when there is no such table."""
    try:
        return _nft("list", "table", "inet", name)
    except KernelError as exc:
        if "No such file or directory" in str(exc):
            return None
        raise


def write_table(spec: NatSpec) -> None:
    """Rewrite our table, nothing else, in one transaction: for changes of our own rules once the
    table is known to be ours (a service's endpoints), without reading the ruleset back first."""
    _nft("-f", "-", stdin=ruleset.replace_table(spec))


def converge(spec: NatSpec) -> NatResult:
    """Make the kernel match `spec`: our table rewritten only when it differs, holes in foreign
    forward chains added or removed; all of it in one transaction."""
    listed = list_table(spec.table)
    if listed is not None and not ruleset.is_ours(listed):
        raise ConflictError(f"nftables table inet {spec.table} exists and is not overlayd's (it lacks the comment "
                            f"{ruleset.OWNER_COMMENT!r}): left alone; set nft_table to another name")
    replace = listed is None or not ruleset.matches(listed, spec)
    try:
        current = json.loads(_nft("-j", "-a", "list", "ruleset"))
    except ValueError as exc:
        raise KernelError(f"nft -j list ruleset: not JSON ({exc})") from None
    holes = ruleset.plan_holes_untrusted(current, spec)
    script = (ruleset.replace_table(spec) if replace else "") + "".join(f"{c}\n" for c in holes.commands)
    if script:
        _nft("-f", "-", stdin=script)
    return NatResult(replace, holes.commands)


def list_counters(name: str) -> object:
    """`nft -j list counters table inet <name>`, decoded (the named counters of network policy)."""
    try:
        return json.loads(_nft("-j", "list", "counters", "table", "inet", name))
    except ValueError as exc:
        raise KernelError(f"nft -j list counters: not JSON ({exc})") from None
