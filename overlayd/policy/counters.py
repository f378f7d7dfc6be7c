"""Drops per policy, from the named counters of our nftables table.

A rewrite of the table (one `nft -f` transaction replaces it) starts every counter at zero,
so NatKeeper reads them just before a rewrite and we carry what they had counted; the
metric is what was carried plus what the kernel counts now. Packets dropped between that
read and the rewrite (a millisecond or so) are not counted. The kernel is read off the
trio thread (the daemon's kernel runner); the metrics scrape reads only memory.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from overlayd.errors import KernelError
from overlayd.nat import nft
from overlayd.policy.nft import counter_values_untrusted

log = logging.getLogger("overlayd")


class PolicyCounters:
    def __init__(self, table: str) -> None:
        self._table = table
        self._carried: Counter[str] = Counter()
        self._current: dict[str, int] = {}
        self.names: tuple[str, ...] = ()  # the counters wanted now (set by the enforcer)

    def read(self, spec: Any) -> dict[str, int] | None:
        """The kernel's counters when the programmed table has policy rules (`spec.policy`), else None."""
        if getattr(spec, "policy", None) is None:
            return None
        try:
            return counter_values_untrusted(nft.list_counters(self._table))
        except KernelError as exc:  # the rewrite goes on; these drops are lost to the metric
            log.warning("reading the policy drop counters: %s", exc)
            return None

    def rewritten(self, snapshot: dict[str, int] | None) -> None:
        """The table was rewritten after `snapshot` was read: carry it, the kernel starts at zero."""
        if snapshot:
            self._carried.update(snapshot)
        self._current = {}

    def seen(self, snapshot: dict[str, int] | None) -> None:
        """A read without a rewrite."""
        if snapshot is not None:
            self._current = snapshot

    def totals(self) -> dict[str, int]:
        """Packets dropped per counter since this daemon started, for the counters wanted now."""
        return {name: self._carried[name] + self._current.get(name, 0) for name in self.names}
