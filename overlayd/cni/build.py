"""Build overlayd-cni's C front (shim.c) for one control socket, with the system's C compiler.

The socket and the Python client to fall back on are compiled in as string
literals (every byte an octal escape, so no path can break the source), so the
executable needs no file of its own at run time. No compiler: the caller
installs the Python client alone (overlayd.cli.cni.launcher), which behaves
the same, only slower to start.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import overlayd
from overlayd.errors import OverlaydError

SOURCE = Path(__file__).with_name("shim.c")
COMPILERS = ("cc", "gcc", "clang")
FLAGS = ("-std=gnu11", "-O2", "-Wall", "-Wextra", "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong", "-s")
# Linked statically when the C library allows it (Debian: libc6-dev has libc.a): no dynamic loader
# at start, ~0.2 ms less per call here. Otherwise dynamically.
LINKING = (("-static",), ())
MAX_SOCKET_PATH = 107  # sockaddr_un.sun_path, less its NUL


class BuildError(OverlaydError):
    """The C front could not be built (the Python client can still be installed)."""


def find_compiler() -> str | None:
    """$CC if set (and found), else the first of cc, gcc, clang on PATH."""
    wanted = os.environ.get("CC")
    for name in ((wanted,) if wanted else COMPILERS):
        path = shutil.which(name)
        if path:
            return path
    return None


def client_code(package_root: Path | None = None) -> str:
    """What the fallback runs with `python -I -S -c`: this overlayd's Python client."""
    root = package_root or Path(overlayd.__file__).resolve().parent.parent
    return (f"import sys; sys.path[:0] = [{str(root)!r}]; "
            "from overlayd.cni.client import main; sys.exit(main())")


def c_string(value: str) -> str:
    """A C string literal of `value`'s UTF-8 bytes, every one an octal escape."""
    return '"' + "".join(f"\\{byte:03o}" for byte in value.encode()) + '"'


def build_shim(target: Path, socket: str, *, python: str = sys.executable, code: str | None = None,
               compiler: str | None = None) -> None:
    """Compile shim.c into `target` (replaced atomically), asking `socket` and falling back on
    `python -I -S -c code`. BuildError when there is no compiler or it fails."""
    if not socket.startswith("/") or "\0" in socket or len(socket.encode()) > MAX_SOCKET_PATH:
        raise BuildError(f"socket {socket!r}: an absolute path of at most {MAX_SOCKET_PATH} bytes is needed")
    cc = compiler or find_compiler()
    if cc is None:
        raise BuildError("no C compiler (cc, gcc or clang) on PATH")
    if not SOURCE.is_file():
        raise BuildError(f"{SOURCE} is missing from this installation")
    defines = {"OVERLAYD_SOCKET": socket, "OVERLAYD_SOCKET_JSON": json.dumps(socket),
               "OVERLAYD_PYTHON": python, "OVERLAYD_CLIENT": code if code is not None else client_code()}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        for linking in LINKING:
            cmd = [cc, *FLAGS, *linking, "-o", temporary, str(SOURCE),
                   *(f"-D{k}={c_string(v)}" for k, v in defines.items())]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise BuildError(f"{cc}: {exc}") from None
            if proc.returncode == 0:
                break
        else:
            raise BuildError(f"{cc} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        os.chmod(temporary, 0o755)
        os.replace(temporary, target)  # a runtime running the old plugin meanwhile is not disturbed
    finally:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
