"""The metrics port, as a trio task: GET /metrics (prometheus_client renders it), /healthz, /readyz.

Served from the daemon's trio loop rather than prometheus_client's threaded server: a
/healthz answer then proves that the loop itself still runs (a thread would answer while
the loop hangs), the server stops with the daemon's nursery, and every request is bounded.
Deliberately tiny: one request per connection (Connection: close), a bounded request
head read under a deadline, and a fixed set of answers (200, 400, 404, 405, 431, 500, 503).
Whatever a client sends, the server answers or hangs up and keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from overlayd.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
# In the exporter range (9100-9999); the whole range is allocated, so this may clash: it is configurable.
DEFAULT_PORT = 9469
DEFAULT_ADDRESS = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
METRICS_PATH = "/metrics"
HEALTH_PATH = "/healthz"  # 200 while the process and its trio loop answer
READY_PATH = "/readyz"  # 200 only when ready and health is "ok"; 503 with the problems otherwise
# What prometheus_client.generate_latest writes (newer releases call another version "latest").
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_HEAD = 8192  # request line and headers; a scrape sends a few hundred bytes
REQUEST_TIMEOUT = 5.0  # seconds a client may take to send its request head
MAX_CONNECTIONS = 16  # connections served at once; more are closed at once

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}

Render = Callable[[], bytes]  # the /metrics body
Unready = Callable[[], Sequence[str]]  # why the host is not ready; empty when it is


def parse_listen_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` -> (host, port); ConfigError otherwise."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""  # an IPv6 address without brackets is ambiguous
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"metrics address {text!r}: expected HOST:PORT, e.g. {DEFAULT_ADDRESS}")
    return host, int(port)


def _response(status: int, body: bytes, *, content_type: str = "text/plain; charset=utf-8",
              head_only: bool = False, extra: str = "") -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
    return head.encode("ascii") + (b"" if head_only else body)


def answer(head: bytes, render: Render, unready: Unready) -> bytes:
    """The whole response to one request head (pure, apart from calling render and unready)."""
    try:
        request_line = head.split(b"\r\n", 1)[0].decode("ascii")
    except UnicodeDecodeError:
        return _response(400, b"bad request\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return _response(400, b"bad request\n")
    method, target, _version = parts
    path = target.split("?", 1)[0]
    if path not in (METRICS_PATH, HEALTH_PATH, READY_PATH):
        return _response(404, f"not found: {METRICS_PATH}, {HEALTH_PATH} and {READY_PATH} are served\n".encode())
    if method not in ("GET", "HEAD"):
        return _response(405, b"method not allowed\n", extra="Allow: GET, HEAD\r\n")
    head_only = method == "HEAD"
    if path == HEALTH_PATH:
        return _response(200, b"ok\n", head_only=head_only)
    try:
        if path == READY_PATH:
            problems = list(unready())
            body = "".join(f"{line}\n" for line in problems) or "ok\n"
            return _response(503 if problems else 200, body.encode("utf-8"), head_only=head_only)
        return _response(200, render(), content_type=CONTENT_TYPE, head_only=head_only)
    except Exception:  # a bug in a metric must not take the endpoint down
        log.exception("answering %s failed", path)
        return _response(500, b"internal error\n")


async def _read_head(stream: trio.abc.Stream) -> bytes | None:
    """The request head through the blank line; None if too big, b"" if the client gave up."""
    buffer = bytearray()
    while b"\r\n\r\n" not in buffer and b"\n\n" not in buffer:
        if len(buffer) > MAX_REQUEST_HEAD:
            return None
        chunk = await stream.receive_some(4096)
        if not chunk:
            return b""
        buffer += chunk
    return bytes(buffer)


class _Handler:
    def __init__(self, render: Render, unready: Unready) -> None:
        self.render = render
        self.unready = unready
        self.active = 0

    async def __call__(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self.active >= MAX_CONNECTIONS:
                return
            self.active += 1
            try:
                with trio.move_on_after(REQUEST_TIMEOUT):
                    head = await _read_head(stream)
                    if head == b"":
                        return
                    reply = (_response(431, b"request too large\n") if head is None
                             else answer(head, self.render, self.unready))
                    await stream.send_all(reply)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self.active -= 1


async def serve_metrics(render: Render, unready: Unready, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve /metrics, /healthz and /readyz until cancelled; `await nursery.start(...)` returns
    the bound port (pass port=0 for any free one). OSError if the address cannot be bound."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("serving %s, %s and %s on http://%s:%d", METRICS_PATH, HEALTH_PATH, READY_PATH,
             f"[{host}]" if ":" in host else host, bound)
    task_status.started(bound)
    await trio.serve_listeners(_Handler(render, unready), listeners)
