"""``python -m deepseek_web.services start|stop|status|env``: manage the embedded PostgreSQL and Redis.

``env`` prints shell-sourceable lines (``eval "$(python -m deepseek_web.services env)"``); it only
computes paths and starts nothing, so it is safe in scripts that merely need the URLs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from deepseek_web.services import control
from deepseek_web.services.paths import (
    DEFAULT_DBNAME,
    PG_APP_ROLE,
    PG_OWNER_ROLE,
    embedded_database_url,
    embedded_redis_url,
    resolve_data_dir,
)
from deepseek_web.services.secrets_files import pg_password_path, read_secret


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deepseek_web.services", description=__doc__)
    parser.add_argument("command", choices=["start", "stop", "status", "env"])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="defaults to $DSW_DATA_DIR, else <project>/var",
    )
    parser.add_argument("--dbname", default=DEFAULT_DBNAME, help="database to create on start")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    data = resolve_data_dir(args.data_dir)

    if args.command == "start":
        infos = control.ensure_all(data, args.dbname)
        for info in infos.values():
            verb = "started" if info.started else "already running"
            print(f"{info.name}: {verb} (pid {info.pid}, {info.seconds:.2f}s) {info.url}")
        return 0
    if args.command == "stop":
        for name, was_running in control.stop_all(data).items():
            print(f"{name}: {'stopped' if was_running else 'not running'}")
        return 0
    if args.command == "status":
        report = control.status(data)
        print(json.dumps(report, indent=2))
        # Exit status usable from scripts: 0 only when both run.
        return 0 if report["postgres"]["running"] and report["redis"]["running"] else 3
    # env: the roles the product connects as, with their generated passwords (the server trusts
    # no connection).
    redis_url = embedded_redis_url(data)
    for variable, role in (("DATABASE_URL", PG_APP_ROLE), ("DATABASE_OWNER_URL", PG_OWNER_ROLE)):
        url = embedded_database_url(data, args.dbname, role, read_secret(pg_password_path(data, role)))
        print(f"{variable}={shlex.quote(url)}")
    print(f"REDIS_URL={shlex.quote(redis_url)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
