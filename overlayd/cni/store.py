"""The CNI attachment store: a snapshot (cni.json) and a journal of the changes since (cni.journal).

Each ADD and DEL appends one line to the journal before the daemon answers
(one write(), ~2 us, instead of rewriting and fsyncing the whole snapshot,
~0.5-1.5 ms and growing with the number of attachments); every COMPACT_AFTER
lines the snapshot is rewritten atomically (fsynced) and the journal emptied.

Durability: a write() that returned is in the page cache, so the record
survives a crash or restart of the daemon. The journal is not fsynced per
call: after a power loss or kernel crash it may lack its last lines (a torn
last line is ignored), but such a loss also takes every namespace and veth an
attachment describes, and the runtime adds its containers again; a missing
record only makes a later DEL a no-op, a stale one waits for DEL or GC.

Replaying the journal over the snapshot is idempotent (each line sets or
removes one key), so a crash between writing a snapshot and emptying the
journal loses nothing and resurrects nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from overlayd.cni.records import Attachment, AttachmentKey
from overlayd.statefile import StateError, read_json, set_aside, write_json_atomic

STORE_VERSION = 1
COMPACT_AFTER = 512  # journal lines before the snapshot is rewritten


class AttachmentStore:
    def __init__(self, path: Path, *, compact_after: int = COMPACT_AFTER) -> None:
        self.path = Path(path)
        self.journal = self.path.with_suffix(".journal")
        self._compact_after = compact_after
        self._fd: int | None = None
        self._lines = 0  # in the journal
        self._must_compact = False  # a failed append may have left part of a line: no appending after it

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def load(self) -> dict[AttachmentKey, Attachment]:
        """What was saved (empty when nothing was); StateError if a file is unusable."""
        data = read_json(self.path)
        try:
            attachments = _parse_untrusted(data) if data is not None else {}
        except ValueError as exc:
            raise StateError(str(self.path), f"corrupt: {exc}") from None
        self._lines = _replay_untrusted(self.journal, attachments)
        return attachments

    def added(self, attachment: Attachment, current: Iterable[Attachment]) -> None:
        """Record an ADD; `current` is every attachment, this one included (for a compaction)."""
        self._append({"add": attachment.to_dict()}, current)

    def removed(self, key: AttachmentKey, current: Iterable[Attachment]) -> None:
        """Record a DEL; `current` is every attachment left."""
        network, container_id, ifname = key
        self._append({"del": {"network": network, "container_id": container_id, "ifname": ifname}}, current)

    def save(self, attachments: Iterable[Attachment]) -> None:
        """Rewrite the snapshot with `attachments` (atomically, fsynced) and empty the journal."""
        rows = sorted((a.to_dict() for a in attachments), key=lambda row: (row["network"], row["container_id"],
                                                                           row["ifname"]))
        write_json_atomic(self.path, {"version": STORE_VERSION, "attachments": rows})
        try:
            os.ftruncate(self._open(), 0)
        except (OSError, StateError):
            return  # its lines are all in the snapshot now: replaying them again changes nothing
        self._lines = 0
        self._must_compact = False

    def set_aside(self) -> str | None:
        aside = set_aside(self.path)
        journal = set_aside(self.journal)
        return ", ".join(p for p in (aside, journal) if p) or None

    def _open(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise StateError(str(self.journal), f"cannot open: {exc.strerror}") from None
        return self._fd

    def _append(self, change: dict, current: Iterable[Attachment]) -> None:
        if self._must_compact or self._lines >= self._compact_after:
            self.save(current)
            return
        line = (json.dumps(change, separators=(",", ":")) + "\n").encode()
        fd = self._open()
        try:
            size = os.fstat(fd).st_size
        except OSError as exc:
            raise StateError(str(self.journal), f"cannot write: {exc.strerror}") from None
        try:
            if os.write(fd, line) != len(line):  # a regular file writes all, unless the disk is full
                raise OSError(28, os.strerror(28))
        except OSError as exc:
            try:
                os.ftruncate(fd, size)  # no part of a line left before the next one
            except OSError:
                self._must_compact = True
            try:
                self.save(current)  # the whole state some other way, or the caller undoes the change
            except StateError as also:
                raise StateError(str(self.journal), f"cannot write: {exc.strerror}; {also.problem}") from None
            return
        self._lines += 1


def _parse_untrusted(data: object) -> dict[AttachmentKey, Attachment]:
    if not isinstance(data, dict) or set(data) != {"version", "attachments"}:
        raise ValueError("expected an object with version and attachments")
    if data["version"] != STORE_VERSION or isinstance(data["version"], bool):
        raise ValueError(f"version is {data['version']!r}, expected {STORE_VERSION}")
    if not isinstance(data["attachments"], list):
        raise ValueError("attachments must be a list")
    out: dict[AttachmentKey, Attachment] = {}
    for raw in data["attachments"]:
        attachment = Attachment.from_dict_untrusted(raw)
        if attachment.key in out:
            raise ValueError(f"attachment {'/'.join(attachment.key)} is listed twice")
        out[attachment.key] = attachment
    return out


def _replay_untrusted(journal: Path, attachments: dict[AttachmentKey, Attachment]) -> int:
    """Apply the journal's lines to `attachments`; their number. A last line without its newline is one
    whose write never finished (a power loss): ignored. StateError for anything else unreadable."""
    try:
        raw = journal.read_bytes()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise StateError(str(journal), f"cannot read: {exc.strerror}") from None
    lines = raw.split(b"\n")[:-1]  # the last piece is b"" or an unfinished line
    for number, line in enumerate(lines, 1):
        try:
            change = json.loads(line)
            if not isinstance(change, dict) or len(change) != 1:
                raise ValueError("expected an object with one of add, del")
            if "add" in change:
                attachment = Attachment.from_dict_untrusted(change["add"])
                attachments[attachment.key] = attachment
            elif "del" in change:
                key = change["del"]
                if not isinstance(key, dict) or set(key) != {"network", "container_id", "ifname"} or \
                        not all(isinstance(v, str) for v in key.values()):
                    raise ValueError("del needs network, container_id and ifname (strings)")
                attachments.pop((key["network"], key["container_id"], key["ifname"]), None)
            else:
                raise ValueError("expected an object with one of add, del")
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise StateError(str(journal), f"corrupt: line {number}: {exc}") from None
    return len(lines)
