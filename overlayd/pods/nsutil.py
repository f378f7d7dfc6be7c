"""Thin ctypes wrappers for the namespace and mount syscalls Python 3.11 lacks.

Every failure becomes a KernelError naming the call, its target and the errno text.
"""

from __future__ import annotations

import ctypes
import errno
import os

from overlayd.errors import KernelError

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000

MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 0x80000
MNT_DETACH = 0x2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


class SyscallError(KernelError):
    """A namespace or mount syscall failed; `errno` keeps the code for callers that tolerate some."""

    def __init__(self, what: str, err: int) -> None:
        super().__init__(f"{what}: {os.strerror(err)} (errno {err})")
        self.errno = err


def _check(ret: int, what: str) -> None:
    if ret != 0:
        raise SyscallError(what, ctypes.get_errno())


def unshare(flags: int) -> None:
    """Move the calling thread into new namespaces of the given CLONE_NEW* kinds."""
    _check(_libc.unshare(flags), f"unshare(0x{flags:x})")


def setns(fd: int, nstype: int) -> None:
    """Move the calling thread into the namespace that `fd` refers to."""
    _check(_libc.setns(fd, nstype), f"setns(fd {fd}, 0x{nstype:x})")


def bind_mount(source: str, target: str) -> None:
    """`mount --bind source target`; used to keep a namespace alive as a file."""
    _check(
        _libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND, None),
        f"bind mount {source} on {target}",
    )


def make_mounts_private_to_this_namespace() -> None:
    """`mount --make-rslave /`: after unshare(CLONE_NEWNS), mounts made here stay here."""
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None), "mount --make-rslave /")


def umount2(target: str, flags: int = MNT_DETACH, *, missing_ok: bool = False) -> None:
    """Unmount `target`; with missing_ok, a path that is absent or not a mount point is fine."""
    if _libc.umount2(os.fsencode(target), flags) == 0:
        return
    err = ctypes.get_errno()
    if missing_ok and err in (errno.EINVAL, errno.ENOENT):
        return
    raise SyscallError(f"umount {target}", err)


def sethostname(name: str) -> None:
    """Set the hostname of the calling thread's UTS namespace."""
    raw = name.encode("ascii")
    _check(_libc.sethostname(raw, len(raw)), f"sethostname({name!r})")
