"""What every benchmark here sets up first: the embedded services and its own database.

Import this module before Django: it points the settings at the `dsw_bench` database and Redis
database 2, so a benchmark never touches the data of `./dsw run` or of the tests.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DB_NAME"] = "dsw_bench"
os.environ.setdefault("DSW_REDIS_DB", "2")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deepseek_web.settings")


def prepare_stack() -> None:
    """Embedded PostgreSQL and Redis, the roles, a migrated `dsw_bench`, and Django set up."""
    from deepseek_web.services import embedded

    data = embedded.data_dir()
    embedded.ensure_postgres(data)
    embedded.ensure_redis(data)
    embedded.ensure_roles(data)
    embedded.ensure_database(data, "dsw_bench", owner=embedded.PG_OWNER_ROLE)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
