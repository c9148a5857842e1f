"""Confine the parsing child: no network, a read-only filesystem with a private tmpfs workdir, user nobody.

The rlimits of `sandbox.py` bound what a hostile file can cost; this bounds what a parser bug an attacker
exploits can reach. Called first thing in the child, while it still holds the worker's privileges:

1. The upload is opened (as the worker, who may read it).
2. As root: new network and mount namespaces (`unshare`). The network namespace has only a loopback
   that is down, so no address (127.0.0.1 included) is reachable. In the mount namespace every mount is
   made private and remounted read-only, keeping its nosuid/nodev/noexec, and a small tmpfs owned by
   `nobody` is mounted over /tmp: the workdir. The upload is copied into it; /tmp of the host (and
   whatever other tests or services keep there) is out of sight.
   Not root: a user namespace gives the network namespace alone, where the kernel allows it.
3. As root: the child drops to `nobody`/`nogroup` with no supplementary groups, so the files and Unix
   sockets of the worker (PostgreSQL's and Redis's sockets are 0700) are out of reach too.
4. `no_new_privs`: no set-uid program or file capability can give privileges back.

What the OS does not allow is skipped, and said on stderr in lines starting with `NOTE_PREFIX`; the
parent logs them (`log_notes`) and the parse goes on with what was possible: the rlimits always apply.

By hand with ctypes: `os.unshare` arrived in Python 3.12 and there is no `mount` in the standard library;
python-prctl covers prctl alone, and pyroute2 or a sandbox binary (bubblewrap, nsjail) would add a
dependency and an exec for four system calls.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import shutil
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

NOTE_PREFIX = "dsw-sandbox: "
WORKDIR = Path("/tmp")
# Room for the copied upload plus a little scratch; the rlimit on file size keeps the parser from
# writing anything anyway.
_SCRATCH_BYTES = 4 * 1024 * 1024
UNPRIVILEGED_USER = "nobody"

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
PR_SET_NO_NEW_PRIVS = 38
# A bind remount must repeat the per-mount flags it keeps: leaving one out would clear it (and make, say,
# a noexec mount executable inside the sandbox).
_KEPT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
               "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}

logger = logging.getLogger(__name__)
_logged: set[str] = set()


@dataclass
class Confinement:
    """Where the upload is now, and what the child could and could not do to itself."""

    path: str
    workdir: Path | None = None
    done: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")


def _unshare(flags: int) -> None:
    _check(_libc().unshare(flags), "unshare")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def encoded(value: str | None) -> bytes | None:
        return value.encode() if value is not None else None

    _check(_libc().mount(encoded(source), encoded(target), encoded(fstype), ctypes.c_ulong(flags),
                         encoded(data)), f"mount {target}")


def _mount_points() -> list[tuple[str, int]]:
    """(mount point, flags to keep) of every mount this namespace sees, from /proc/self/mountinfo."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            # Field 5 is the mount point with spaces and the like written as octal escapes (\040).
            point = fields[4].encode().decode("unicode_escape")
            flags = 0
            for option in fields[5].split(","):
                flags |= _KEPT_FLAGS.get(option, 0)
            points.append((point, flags))
    return points


def _python_roots() -> list[Path]:
    """The folders the interpreter imports from (stdlib, site-packages, our code), outermost only."""
    candidates = {Path(p).resolve() for p in (sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix,
                                               *sys.path) if p and os.path.isdir(p)}
    return sorted(root for root in candidates if not any(other != root and other in root.parents
                                                         for other in candidates))


def _blocking_ancestor(root: Path) -> Path | None:
    """The outermost folder above `root` that others may not enter (e.g. a pyenv under 0700 /root)."""
    for folder in reversed(root.parents):
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return folder
    return None


def _expose_python(confinement: Confinement) -> None:
    """Lets nobody reach the interpreter where a folder above it is closed to others, in this namespace
    only: a tmpfs over that folder hides the rest of it, and the Python folders are bound back in place."""
    exposed = []
    for root in _python_roots():
        blocking = _blocking_ancestor(root)
        if blocking is None:
            continue
        handle = os.open(blocking, os.O_PATH | os.O_DIRECTORY)  # reaches the original under the tmpfs
        try:
            _mount("dsw-parse", str(blocking), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
            root.mkdir(parents=True, exist_ok=True)
            _mount(f"/proc/self/fd/{handle}/{root.relative_to(blocking)}", str(root), None, MS_BIND | MS_REC)
        finally:
            os.close(handle)
        exposed.append(str(root))
    if exposed:
        confinement.done.append(f"only the Python folders of closed parents visible: {', '.join(exposed)}")


def _read_only_everywhere(confinement: Confinement) -> None:
    failed = []
    for point, flags in _mount_points():
        try:
            _mount(None, point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags)
        except OSError as error:
            failed.append(f"{point} ({error.strerror})")
    if failed:
        confinement.missing.append("could not make read-only: " + ", ".join(failed))
    else:
        confinement.done.append("read-only filesystem")


def _private_workdir(source: int, name: str, owner: pwd.struct_passwd, confinement: Confinement) -> None:
    # Python folders inside /tmp (a checkout there, say) would vanish under the tmpfs: hold them by a
    # handle and bind them back, read-only, once it is mounted.
    kept = [(root, os.open(root, os.O_PATH | os.O_DIRECTORY)) for root in _python_roots() if WORKDIR in root.parents]
    try:
        size = os.fstat(source).st_size + _SCRATCH_BYTES
        _mount("dsw-parse", str(WORKDIR), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
               f"size={size},mode=0700,uid={owner.pw_uid},gid={owner.pw_gid}")
        for root, handle in kept:
            root.mkdir(parents=True, exist_ok=True)
            _mount(f"/proc/self/fd/{handle}", str(root), None, MS_BIND | MS_REC)
            _mount(None, str(root), None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    finally:
        for _, handle in kept:
            os.close(handle)
    target = WORKDIR / name
    with os.fdopen(os.dup(source), "rb") as reader, open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer)
    os.chmod(target, 0o400)
    os.chown(target, owner.pw_uid, owner.pw_gid)
    confinement.path = str(target)
    confinement.workdir = WORKDIR
    confinement.done.append(f"private tmpfs workdir {WORKDIR}")


def _as_root(source: int, name: str, confinement: Confinement) -> None:
    owner = pwd.getpwnam(UNPRIVILEGED_USER)
    try:
        _unshare(CLONE_NEWNET)
        confinement.done.append("no network")
    except OSError as error:
        confinement.missing.append(f"no network namespace ({error.strerror})")
    try:
        _unshare(CLONE_NEWNS)
        _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount or remount reaches the host
        _expose_python(confinement)
        _read_only_everywhere(confinement)
        _private_workdir(source, name, owner, confinement)
    except OSError as error:
        # Without a private copy, nobody could not read the upload: keep the worker's user, say so.
        confinement.missing.append(f"no mount namespace or workdir ({error.strerror}); "
                                   f"stays user {os.geteuid()}")
        return
    try:
        os.setgroups([])
        os.setgid(owner.pw_gid)
        os.setuid(owner.pw_uid)
    except OSError as error:
        # Root of a user namespace that maps no `nobody` (a rootless container, say).
        confinement.missing.append(f"no switch to user {UNPRIVILEGED_USER} ({error.strerror}); "
                                   f"stays user {os.geteuid()}")
        return
    confinement.done.append(f"user {UNPRIVILEGED_USER}")


def _as_user(confinement: Confinement) -> None:
    # An unprivileged user may still get a network namespace of its own inside a user namespace,
    # where the kernel allows unprivileged user namespaces.
    try:
        _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        confinement.done.append("no network")
    except OSError as error:
        confinement.missing.append(f"no network namespace ({error.strerror})")
    confinement.missing.append("not root: no read-only filesystem, workdir or user switch")


def confine(path: str) -> Confinement:
    """Confines this process as far as the OS allows; returns where to read the upload from."""
    source = os.open(path, os.O_RDONLY)  # a missing file fails here, as it would in the parser
    try:
        confinement = Confinement(path=path)
        if os.geteuid() == 0:
            _as_root(source, os.path.basename(path), confinement)
        else:
            _as_user(confinement)
    finally:
        os.close(source)
    if _libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
        confinement.done.append("no_new_privs")
    else:
        confinement.missing.append(f"no_new_privs ({os.strerror(ctypes.get_errno())})")
    # Out of the worker's directory: relative paths then mean the workdir, or nothing writable.
    os.chdir(confinement.workdir or "/")
    return confinement


def note_lines(confinement: Confinement) -> list[str]:
    """The stderr lines that tell the parent what could not be done."""
    return [f"{NOTE_PREFIX}{missing}" for missing in confinement.missing]


def log_notes(stderr: str) -> None:
    """In the parent: log, once per process, each thing a child could not do."""
    for line in stderr.splitlines():
        if line.startswith(NOTE_PREFIX) and line not in _logged:
            _logged.add(line)
            logger.warning("parser sandbox degraded: %s", line.removeprefix(NOTE_PREFIX))
