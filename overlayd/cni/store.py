"""The CNI attachment store: one JSON file, written atomically before the daemon answers."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from overlayd.cni.records import Attachment, AttachmentKey
from overlayd.statefile import StateError, read_json, set_aside, write_json_atomic

STORE_VERSION = 1


class AttachmentStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[AttachmentKey, Attachment]:
        """What was saved (empty when nothing was); StateError if the file is unusable."""
        data = read_json(self.path)
        if data is None:
            return {}
        try:
            return _parse_untrusted(data)
        except ValueError as exc:
            raise StateError(str(self.path), f"corrupt: {exc}") from None

    def save(self, attachments: Iterable[Attachment]) -> None:
        rows = sorted((a.to_dict() for a in attachments), key=lambda row: (row["network"], row["container_id"],
                                                                           row["ifname"]))
        write_json_atomic(self.path, {"version": STORE_VERSION, "attachments": rows})

    def set_aside(self) -> str | None:
        return set_aside(self.path)


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
