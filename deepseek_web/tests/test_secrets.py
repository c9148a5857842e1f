"""The keys: production settings refuse public or weak ones, and `./dsw run` generates them once.

Settings are imported in a child process with a controlled environment (nothing of this process's
environment leaks in but PATH), on an empty data dir of its own: no database or Redis is needed
to import settings and run ``django.setup()``.
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from deepseek_web.services.secrets_files import audit_hmac_key_path, ensure_secret_files, secret_key_path

ROOT = Path(__file__).resolve().parents[2]
SETUP = (
    "import django; django.setup(); from django.conf import settings; "
    "print(settings.SECRET_KEY); print(settings.AUDIT_HMAC_KEY)"
)


def strong() -> str:
    return secrets.token_urlsafe(64)


def import_settings(data: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ.get("PATH", ""), "DSW_DATA_DIR": str(data),
                   "DJANGO_SETTINGS_MODULE": "deepseek_web.settings", **env}
    return subprocess.run([sys.executable, "-c", SETUP], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=120)


def test_it_refuses_to_start_in_production_with_the_default_keys(tmp_path: Path) -> None:
    result = import_settings(tmp_path, DEBUG="0")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "SECRET_KEY is the public development default" in result.stderr


@pytest.mark.parametrize("secret_key,audit_key,complaint", [
    ("too-short-" + "x1y2z3", "strong", "SECRET_KEY is too weak"),
    ("ab" * 40, "strong", "SECRET_KEY is too weak"),  # long but only two distinct characters
    ("django-insecure-" + secrets.token_urlsafe(64), "strong", "SECRET_KEY is too weak"),
    ("strong", "", "AUDIT_HMAC_KEY is not set"),
    ("strong", "ab" * 40, "AUDIT_HMAC_KEY is too weak"),
    ("strong", "same", "AUDIT_HMAC_KEY must be a separate key"),
    ("strong", "derived", "AUDIT_HMAC_KEY must be a separate key"),
], ids=["short", "repetitive", "placeholder", "no-audit-key", "weak-audit-key", "same", "derived"])
def test_it_refuses_weak_missing_or_shared_keys_in_production(tmp_path: Path, secret_key: str, audit_key: str,
                                                               complaint: str) -> None:
    secret_key = strong() if secret_key == "strong" else secret_key
    audit_key = {"strong": strong(), "same": secret_key, "derived": "audit:" + secret_key}.get(audit_key, audit_key)
    env = {"DEBUG": "0", "SECRET_KEY": secret_key}
    if audit_key:
        env["AUDIT_HMAC_KEY"] = audit_key
    result = import_settings(tmp_path, **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and complaint in result.stderr


def test_it_starts_in_production_with_strong_separate_keys(tmp_path: Path) -> None:
    secret_key, audit_key = strong(), strong()
    result = import_settings(tmp_path, DEBUG="0", SECRET_KEY=secret_key, AUDIT_HMAC_KEY=audit_key)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [secret_key, audit_key]


def test_it_creates_the_key_files_once_private_and_reuses_them(tmp_path: Path) -> None:
    ensure_secret_files(tmp_path)
    secret_file, audit_file = secret_key_path(tmp_path), audit_hmac_key_path(tmp_path)
    assert stat.S_IMODE(secret_file.parent.stat().st_mode) == 0o700
    for path in (secret_file, audit_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = secret_file.read_text(), audit_file.read_text()
    assert first[0].strip() != first[1].strip() and len(first[0].strip()) >= 50

    ensure_secret_files(tmp_path)  # a second start keeps them
    assert (secret_file.read_text(), audit_file.read_text()) == first

    # Production settings with nothing in the environment use the files.
    result = import_settings(tmp_path, DEBUG="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [first[0].strip(), first[1].strip()]
    # The environment still wins over the files.
    secret_key, audit_key = strong(), strong()
    result = import_settings(tmp_path, DEBUG="0", SECRET_KEY=secret_key, AUDIT_HMAC_KEY=audit_key)
    assert result.stdout.split() == [secret_key, audit_key]


def test_it_never_overwrites_a_key_file_that_exists(tmp_path: Path) -> None:
    mine = strong()
    secret_key_path(tmp_path).parent.mkdir(mode=0o700)
    secret_key_path(tmp_path).write_text(mine + "\n")
    ensure_secret_files(tmp_path)
    assert secret_key_path(tmp_path).read_text() == mine + "\n"
    assert audit_hmac_key_path(tmp_path).read_text().strip() != mine
