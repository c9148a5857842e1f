"""House rules that the test command enforces: lint, strict types, migrations, the architecture.

Each check runs the real tool on the whole repository, so `./dsw test` fails on any finding:
- ruff with the rule set in pyproject.toml;
- mypy strict (with django-stubs) on every product package;
- `makemigrations --check`: a model change without its migration;
- import-linter's contracts in pyproject.toml: apps depend downwards only (no cycles between them),
  the engine imports no framework, and the engine's modules have no import cycle.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PACKAGES = ["deepseek_web", "tenants", "audit", "console", "chat", "knowledge", "inference", "openai_api", "tests"]


def run(*command: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=env)


def test_it_has_no_ruff_findings() -> None:
    result = run(BIN / "ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_type_checks_with_mypy_strict() -> None:
    result = run(sys.executable, "-m", "mypy", *PACKAGES, "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_has_a_migration_for_every_model_change(django_db_setup: None) -> None:
    from django.conf import settings

    # The test database: makemigrations reads the migration history from the database it is given.
    env = {**os.environ, "DB_NAME": str(settings.DATABASES["default"]["NAME"])}
    result = run(sys.executable, "manage.py", "makemigrations", "--check", "--dry-run", env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_keeps_the_architecture_contracts() -> None:
    result = run(BIN / "lint-imports", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
