"""A blocking control-socket client: what overlayctl (and benchmarks) use.

Plain sockets rather than trio keep the CLI's start-up short.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from overlayd.api import protocol
from overlayd.errors import OverlaydError


class DaemonUnreachable(OverlaydError):
    pass


class ControlClient:
    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, cmd: str, **args: Any) -> Any:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
                sock.sendall(protocol.encode_request(cmd, args))
                reply = bytearray()
                while not reply.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
                    if len(reply) > protocol.MAX_REPLY_BYTES:
                        raise OverlaydError("daemon reply too large")
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnreachable(f"cannot reach overlayd at {self.path}: {exc.strerror} (is it running?)") from None
        except PermissionError:
            raise DaemonUnreachable(f"no permission to use {self.path} (run as root)") from None
        except socket.timeout:
            raise DaemonUnreachable(f"overlayd at {self.path} did not answer within {self.timeout:g}s") from None
        except OSError as exc:
            raise DaemonUnreachable(f"talking to overlayd at {self.path}: {exc}") from None
        return protocol.decode_reply(bytes(reply))
