"""What both embedded servers share: their result and error types, pids, locks, termination, and
the OS-user and socket-dir helpers."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from deepseek_web.services.paths import short_runtime_dir


@dataclass(frozen=True)
class ServiceInfo:
    """What ensure_* found or started."""

    name: str
    started: bool  # False when an already running server was reused
    pid: int
    socket: Path
    url: str
    log: Path
    seconds: float  # wall time spent in ensure_*

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["socket"] = str(self.socket)
        out["log"] = str(self.log)
        return out


class ServiceError(RuntimeError):
    """An embedded service could not be started or stopped."""


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    # flock (not a pid file) so the lock dies with its holder: a crashed start never wedges the
    # next one. Each call opens its own file description, so threads in one process serialise too.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def live_process(pid: int) -> psutil.Process | None:
    """psutil.Process for a live pid, or None."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.NoSuchProcess, ValueError):
        return None


def read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().splitlines()[0].strip()
        return int(first)
    except (OSError, IndexError, ValueError):
        return None


def wait_gone(pid: int, timeout: float) -> bool:
    # Poll ourselves instead of psutil's wait(): the servers are not our children (they were
    # daemonized), so once dead they linger as zombies until init reaps them, which here took
    # seconds; live_process() already counts a zombie as gone.
    deadline = time.monotonic() + timeout
    while live_process(pid) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def terminate(pid: int, timeout: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_gone(pid, 5.0)


def is_root() -> bool:
    return os.geteuid() == 0


def ensure_traversable(path: Path) -> None:
    """Let another OS user (pgserver) walk down to ``path``.

    Only o+x is added to the ancestors, not o+r: traversal is all postgres needs, and listing the
    contents of, say, /root would be more than it should get.
    """
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def chown(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def primary_gid(user: str) -> int:
    return pwd.getpwnam(user).pw_gid


def _make_short_runtime_dir(data: Path) -> Path:
    """Create /tmp/dsw-<hash> safely: /tmp is shared, so refuse a dir someone else planted."""
    short = short_runtime_dir(data)
    try:
        short.mkdir(mode=0o711)
    except FileExistsError:
        st = short.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            # from None: that it exists is the message itself, not a second error to chain.
            raise ServiceError(f"{short} exists and is not a directory owned by us; refusing to use it") from None
    # 0711: pgserver must traverse into pg/, nobody needs to list it.
    short.chmod(0o711)
    return short


def prepare_socket_dir(data: Path, sock_dir: Path, owner: str | None) -> None:
    if sock_dir.parent == short_runtime_dir(data):
        _make_short_runtime_dir(data)
    sock_dir.mkdir(parents=True, exist_ok=True)
    # 0700: sockets use trust auth / no password, so the directory is the access control.
    sock_dir.chmod(0o700)
    if owner is not None:
        chown(sock_dir, owner)


def remove_short_runtime_dir_if_empty(data: Path, sock_dir: Path) -> None:
    short = short_runtime_dir(data)
    if sock_dir.parent != short:
        return
    for candidate in (sock_dir, short):
        with contextlib.suppress(OSError):
            candidate.rmdir()  # only succeeds when empty, which is the point
