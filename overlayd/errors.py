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
