"""Run a command inside a pod: join its net, UTS and IPC namespaces, then exec.

`overlayctl pod exec` asks the daemon for the namespace paths and calls
enter_pod_namespaces(); `python -m overlayd.pods.exec NET UTS IPC [RESOLV] -- CMD...`
does the same without a daemon (tests, debugging). Needs root. With the pod's
resolv.conf, the command also gets a mount namespace of its own in which that file
is /etc/resolv.conf, as `ip netns exec` does with /etc/netns/<name>/resolv.conf.

A command that cannot run exits like a shell would: 127 when it is not found,
126 when it is found but cannot be executed, with one line saying why.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import NoReturn

from overlayd.errors import KernelError, OverlaydError, UsageError
from overlayd.pods import nsutil


EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


class ExecFailed(OverlaydError):
    """The command could not be started; exit_code is what a shell would return for it."""

    def __init__(self, message: str, exit_code: int) -> None:
        self.exit_code = exit_code
        super().__init__(message)


def exec_command(cmd: list[str]) -> NoReturn:
    """Replace this process with cmd (searched in PATH); ExecFailed if it cannot run."""
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise ExecFailed(f"command not found: {cmd[0]}", EXIT_NOT_FOUND) from None
        raise ExecFailed(f"cannot execute {cmd[0]}: {exc.strerror}", EXIT_CANNOT_EXECUTE) from None


def enter_pod_namespaces(net_path: str, uts_path: str, ipc_path: str, resolv_conf: str | None = None) -> None:
    """Move the calling thread (for a CLI about to exec: the process) into a pod's namespaces."""
    targets = [(net_path, nsutil.CLONE_NEWNET, "network"), (uts_path, nsutil.CLONE_NEWUTS, "UTS"),
               (ipc_path, nsutil.CLONE_NEWIPC, "IPC")]
    fds: list[int] = []
    try:
        # Open all first: a missing pod fails before we have joined anything.
        for path, _nstype, kind in targets:
            try:
                fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
            except OSError as exc:
                raise KernelError(f"cannot open the pod's {kind} namespace {path}: {exc.strerror}") from exc
        for fd, (path, nstype, kind) in zip(fds, targets):
            try:
                nsutil.setns(fd, nstype)
            except KernelError as exc:
                raise KernelError(f"cannot enter the pod's {kind} namespace {path}: {exc}") from exc
    finally:
        for fd in fds:
            os.close(fd)
    if resolv_conf is not None and os.path.exists(resolv_conf):
        show_as_etc_resolv_conf(resolv_conf)


def show_as_etc_resolv_conf(path: str) -> None:
    """A mount namespace of our own in which `path` is /etc/resolv.conf (the host's stays as it is)."""
    try:
        nsutil.unshare(nsutil.CLONE_NEWNS)
        nsutil.make_mounts_private_to_this_namespace()
        nsutil.bind_mount(path, "/etc/resolv.conf")
    except KernelError as exc:
        raise KernelError(f"cannot show the pod's resolv.conf {path} as /etc/resolv.conf: {exc}") from exc


def main(argv: list[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if argv is None else argv
    try:
        paths = args[:args.index("--")] if "--" in args else []
        if len(paths) not in (3, 4) or len(args) <= len(paths) + 1:
            raise UsageError("usage: python -m overlayd.pods.exec NET UTS IPC [RESOLV] -- CMD [ARGS...]")
        enter_pod_namespaces(*paths)
        exec_command(args[len(paths) + 1:])
    except ExecFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OverlaydError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, UsageError) else 1)


if __name__ == "__main__":
    main()
