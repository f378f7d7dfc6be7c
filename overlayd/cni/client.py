"""overlayd-cni in Python: the C front's fallback (overlayd/cni/shim.c), and the plugin itself where no C
compiler was at hand for `overlayctl cni install`.

The C front hands this client every case it does not carry itself (VERSION, a
daemon it cannot reach, a config for another socket, ...), with the same
environment and stdin, so the spec's edge cases have this one implementation.

Runtimes start one plugin process per container and per command, so the
process start is most of a CNI call's cost. This client therefore imports only
C modules (`_socket`, `_json`, `posix`; `socket` and `json` pull in `re`, `enum` and
more, ~10 ms here) and leaves everything else to the daemon: it forwards the
CNI_* environment and stdin as they are over the control socket (command
`cni.exec`) and prints what the daemon answers, with its exit code. The daemon
parses the untrusted input (overlayd.cni.handler). Only what must work without
a daemon is answered here: VERSION, and the error JSON when the daemon cannot
be reached (code 11, or 50 for STATUS), or when stdin is no JSON object
(code 6: the daemon's socket is named there).
"""

from __future__ import annotations

import _json
import _socket
import posix  # os.environ without importing os (~10 ms with -S, which skips site and so os)
import sys

DEFAULT_SOCKET = "/run/overlayd/overlayd.sock"
SUPPORTED_VERSIONS = ["1.0.0", "1.1.0"]  # restated from overlayd.cni.spec: importing it costs start-up time
MAX_CONFIG_BYTES = 1 << 20
ERR_DECODE, ERR_INVALID_CONFIG, ERR_TRY_AGAIN, ERR_NOT_AVAILABLE = 6, 7, 11, 50
MAX_REQUEST_BYTES = 64 * 1024  # the control socket's limit (overlayd.api.protocol), restated
TIMEOUT_S = 60.0


class _Decoding:
    """The settings _json's C scanner reads from json.JSONDecoder, without importing json."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity
    memo: dict = {}


_scan = _json.make_scanner(_Decoding())


def _decode(text: str) -> object:
    """A JSON value, or None when `text` is not one.

    _json's scanner is the fast path for well-formed input; on anything else it
    needs json.decoder for its exception (under -S it fails without it), so the
    json module, imported only then, decides.
    """
    text = text.strip()
    try:
        value, end = _scan(text, 0)
        if end == len(text):
            return value
    except Exception:  # noqa: BLE001 (any failure: json.loads below gives the verdict)
        pass
    import json

    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _quote(value: str) -> str:
    return _json.encode_basestring_ascii(value)


def _request(env: dict[str, str], raw: bytes) -> bytes:
    pairs = ", ".join(f"{_quote(k)}: {_quote(v)}" for k, v in sorted(env.items()))
    return f'{{"cmd": "cni.exec", "args": {{"env": {{{pairs}}}, "stdin_hex": "{raw.hex()}"}}}}\n'.encode()


def _socket_path(config: object) -> str:
    path = config.get("socket") if isinstance(config, dict) else None
    return path if isinstance(path, str) else DEFAULT_SOCKET


def _config(raw: bytes) -> object:
    text = raw.decode("utf-8", "replace")
    return _decode(text) if text.strip() else {}


def target_socket(raw: bytes) -> str | None:
    """The control socket this client asks for the config `raw`; None when it answers without one
    (stdin is no JSON object). The daemon uses it to tell the C front when a call is not for it."""
    config = _config(raw)
    return _socket_path(config) if isinstance(config, dict) else None


def _version(config: object) -> str:
    version = config.get("cniVersion") if isinstance(config, dict) else None
    return version if isinstance(version, str) and len(version) < 32 else SUPPORTED_VERSIONS[-1]


def _ask(path: str, request: bytes) -> str:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(TIMEOUT_S)
        sock.connect(path)
        sock.sendall(request)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply.decode("utf-8", "replace")
    finally:
        sock.close()


def _error(config: object, code: int, msg: str) -> tuple[str, int]:
    return f'{{"cniVersion": {_quote(_version(config))}, "code": {code}, "msg": {_quote(msg)}}}\n', 1


def run(env: dict[str, str], raw: bytes) -> tuple[str, int]:
    """(stdout, exit code) for one call."""
    config = _config(raw)
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        supported = ", ".join(_quote(v) for v in SUPPORTED_VERSIONS)
        return f'{{"cniVersion": {_quote(_version(config))}, "supportedVersions": [{supported}]}}\n', 0
    if not isinstance(config, dict):  # without it, not even the daemon's socket is known
        return _error(config, ERR_DECODE, "network config on stdin is not a JSON object")
    path = _socket_path(config)
    unavailable = ERR_NOT_AVAILABLE if command == "STATUS" else ERR_TRY_AGAIN
    request = _request(env, raw)
    if len(request) > MAX_REQUEST_BYTES:
        return _error(config, ERR_INVALID_CONFIG, f"network config too large ({len(raw)} bytes; at most about "
                                                  f"{MAX_REQUEST_BYTES // 2 // 1024} KiB)")
    try:
        reply = _decode(_ask(path, request))
    except OSError as exc:
        return _error(config, unavailable, f"cannot reach overlayd at {path}: {exc.strerror or exc}")
    if not isinstance(reply, dict):
        return _error(config, unavailable, f"overlayd at {path} sent an unreadable reply")
    result = reply.get("result")
    if reply.get("ok") is not True or not isinstance(result, dict):
        message = (reply.get("error") or {}).get("message", "unknown error")
        return _error(config, unavailable, f"overlayd at {path}: {message}")
    return str(result.get("stdout", "")), int(result.get("exit", 1))


def main() -> int:
    raw = sys.stdin.buffer.read(MAX_CONFIG_BYTES + 1) if sys.stdin is not None else b""  # closed: no config
    env = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in posix.environ.items()
           if k.startswith(b"CNI_")}
    out, code = run(env, raw)
    sys.stdout.write(out)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
