"""The daemon's exception hierarchy: every error we raise on purpose is an OverlaydError."""


class OverlaydError(Exception):
    """Base of every error overlayd raises deliberately."""


class ConfigError(OverlaydError):
    """A configuration file, flag or cluster config is invalid."""


class UsageError(OverlaydError):
    """A request or CLI argument is malformed (exit code 2 in the CLI)."""


class NotFoundError(OverlaydError):
    """A named object (pod, host) does not exist."""


class ConflictError(OverlaydError):
    """The request conflicts with existing state (name taken, live leases...)."""


class ClusterError(OverlaydError):
    """etcd is unreachable or answered something we cannot use."""


class KernelError(OverlaydError):
    """Programming the kernel (netlink, namespaces, mounts) failed."""


def fatal_error(exc: BaseException) -> Exception | None:
    """The one error worth a single line when the daemon stops on `exc`, else None.

    trio (>= 0.25) wraps whatever a task raised in nested exception groups; unwrap them.
    Our own errors and OS errors (a path we may not write, a port in use) are the
    operator's to fix and get one line; anything else is a bug and keeps its traceback.
    """
    while isinstance(exc, BaseExceptionGroup):
        found = [fatal_error(inner) for inner in exc.exceptions]
        if not found or any(err is None for err in found):
            return None
        exc = found[0]  # type: ignore[assignment]
    return exc if isinstance(exc, (OverlaydError, OSError)) else None
