"""Wire format of the control socket: one JSON object per line, each way.

Request:  {"cmd": "pod.add", "args": {"name": "web", "labels": {"app": "web"}}}
Reply:    {"ok": true, "result": ...}
          {"ok": false, "error": {"kind": "usage", "message": "..."}}

JSON only (never pickle): the socket is a trust boundary, even if a small one.
"""

from __future__ import annotations

import json
from typing import Any

from overlayd.errors import (
    ClusterError,
    ConfigError,
    ConflictError,
    KernelError,
    NotFoundError,
    OverlaydError,
    UsageError,
)

MAX_REQUEST_BYTES = 64 * 1024
MAX_REPLY_BYTES = 16 * 1024 * 1024

# Error kinds on the wire, so the client can raise the same exception class.
_KINDS: dict[str, type[OverlaydError]] = {
    "usage": UsageError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "cluster": ClusterError,
    "kernel": KernelError,
    "config": ConfigError,
    "internal": OverlaydError,
}


def error_kind(exc: OverlaydError) -> str:
    for kind, cls in _KINDS.items():
        if type(exc) is cls:
            return kind
    for kind, cls in _KINDS.items():
        if isinstance(exc, cls):
            return kind
    return "internal"


def encode_request(cmd: str, args: dict[str, Any]) -> bytes:
    return json.dumps({"cmd": cmd, "args": args}).encode() + b"\n"


def decode_request_untrusted(line: bytes) -> tuple[str, dict[str, Any]]:
    """Parse one request line; raises UsageError for anything malformed."""
    if len(line) > MAX_REQUEST_BYTES:
        raise UsageError(f"request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"request is not valid JSON: {exc}") from None
    except RecursionError:  # [[[[...]]]] fits in the size limit but not on the stack
        raise UsageError("request is nested too deeply") from None
    if not isinstance(message, dict):
        raise UsageError("request must be a JSON object")
    cmd = message.get("cmd")
    args = message.get("args", {})
    if not isinstance(cmd, str) or not isinstance(args, dict):
        raise UsageError('request needs "cmd" (string) and optional "args" (object)')
    return cmd, args


def encode_reply(result: Any) -> bytes:
    return json.dumps({"ok": True, "result": result}).encode() + b"\n"


def encode_error(exc: OverlaydError) -> bytes:
    return json.dumps({"ok": False, "error": {"kind": error_kind(exc), "message": str(exc)}}).encode() + b"\n"


def decode_reply(line: bytes) -> Any:
    """Return the result, or raise the OverlaydError subclass the server sent."""
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise OverlaydError(f"daemon sent an unreadable reply: {exc}") from None
    if not isinstance(message, dict) or "ok" not in message:
        raise OverlaydError("daemon sent a reply without 'ok'")
    if message["ok"]:
        return message.get("result")
    error = message.get("error") or {}
    cls = _KINDS.get(error.get("kind", "internal"), OverlaydError)
    raise cls(str(error.get("message", "unknown error")))
