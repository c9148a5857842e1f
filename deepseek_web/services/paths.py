"""Where the embedded services live and how to reach them: pure paths, URLs and DATABASES fields.

Pure means no process is started and nothing is created, so ``settings.py`` can compute connection
URLs before anything runs. That is why settings imports it (with ``secrets_files``, which reads
the generated keys), and why it must import neither Django nor any process, PostgreSQL or Redis code.

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
string, so the fallback is still predictable by these helpers.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

# The port only names the socket file (.s.PGSQL.<port>): TCP is off. We pin it, and put it in the
# URL, so a PGPORT in someone's environment can't make libpq look for a different socket name.
PG_PORT = 5432
PG_SUPERUSER = "postgres"
# Row-level security needs two roles: the owner runs migrations and owns every table; the app
# role is what the product connects as, owns nothing, and can never bypass RLS.
PG_OWNER_ROLE = "dsw_owner"
PG_APP_ROLE = "dsw_app"
DEFAULT_DBNAME = "deepseek_web"

# sun_path is 108 bytes on Linux (107 usable, PostgreSQL and Redis both refuse longer) and 104 on
# macOS. Staying well under both keeps the choice identical on every platform we run on.
SOCKET_PATH_MAX = 100

_SHORT_RUNTIME_ROOT = Path("/tmp")


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent.parent


def normalize_data_dir(data: Path | str) -> Path:
    # Lexical normalisation only (no resolve()): the helpers must not depend on the filesystem,
    # and the same string must be used for the postgres command line that we later match against.
    return Path(os.path.abspath(os.path.expanduser(str(data))))


def data_dir() -> Path:
    env = os.environ.get("DSW_DATA_DIR")
    return normalize_data_dir(env) if env else project_root() / "var"


def resolve_data_dir(data: Path | str | None) -> Path:
    """``data`` normalised, or the default data dir when it is None (what every ensure/stop takes)."""
    return normalize_data_dir(data) if data is not None else data_dir()


def short_runtime_dir(data: Path | str) -> Path:
    digest = hashlib.sha256(str(normalize_data_dir(data)).encode()).hexdigest()[:12]
    return _SHORT_RUNTIME_ROOT / f"dsw-{digest}"


def _socket_path_fits(socket_path: Path) -> bool:
    return len(os.fsencode(str(socket_path))) <= SOCKET_PATH_MAX


def pg_base_dir(data: Path | str) -> Path:
    return normalize_data_dir(data) / "pg"


def pg_data_path(data: Path | str) -> Path:
    # PGDATA is a subdirectory so the log file and lock can sit next to it: initdb wants an empty
    # directory, and postgres wants PGDATA to hold nothing it didn't create.
    return pg_base_dir(data) / "data"


def pg_log_path(data: Path | str) -> Path:
    return pg_base_dir(data) / "postgres.log"


def postgres_socket_dir(data: Path | str) -> Path:
    preferred = pg_base_dir(data) / "run"
    if _socket_path_fits(preferred / f".s.PGSQL.{PG_PORT}"):
        return preferred
    return short_runtime_dir(data) / "pg"


def postgres_socket_path(data: Path | str) -> Path:
    return postgres_socket_dir(data) / f".s.PGSQL.{PG_PORT}"


def redis_dir(data: Path | str) -> Path:
    return normalize_data_dir(data) / "redis"


def redis_socket_path(data: Path | str) -> Path:
    preferred = redis_dir(data) / "redis.sock"
    if _socket_path_fits(preferred):
        return preferred
    return short_runtime_dir(data) / "redis" / "redis.sock"


def redis_pid_path(data: Path | str) -> Path:
    return redis_dir(data) / "redis.pid"


def redis_log_path(data: Path | str) -> Path:
    return redis_dir(data) / "redis.log"


def embedded_database_url(
    data: Path | str, dbname: str = DEFAULT_DBNAME, user: str = PG_SUPERUSER, password: str | None = None
) -> str:
    """libpq URL, e.g. ``postgresql://postgres@/deepseek_web?host=/abs/var/pg/run&port=5432``.

    The socket directory goes in the ``host`` query parameter (libpq percent-decodes it), which
    psycopg, psql and ``dj-database-url``-style parsers all understand. The server asks every role
    for its password (scram-sha-256), so a URL that connects carries one.
    """
    query = urlencode({"host": str(postgres_socket_dir(data)), "port": str(PG_PORT)}, safe="/")
    auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    return f"postgresql://{auth}@/{quote(dbname, safe='')}?{query}"


def embedded_database_settings(
    data: Path | str, dbname: str = DEFAULT_DBNAME, user: str = PG_SUPERUSER, password: str = ""
) -> dict[str, str]:
    """The connection fields of a Django ``DATABASES`` entry (ENGINE etc. are settings' business).

    Django passes HOST straight to libpq, where a value starting with ``/`` is a socket dir.
    """
    return {
        "HOST": str(postgres_socket_dir(data)),
        "PORT": str(PG_PORT),
        "USER": user,
        "PASSWORD": password,
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
