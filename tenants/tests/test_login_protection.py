from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

ROOT = Path(__file__).resolve().parents[2]


def attempt(password: str, ip: str, username: str = "alice") -> Any:
    return Client(REMOTE_ADDR=ip).post(reverse("login"), {"username": username, "password": password})


def test_it_locks_out_a_username_only_from_the_address_that_keeps_failing(world) -> None:
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert attempt("wrong", "203.0.113.9").status_code == 200  # the form again, with an error
    assert attempt("wrong", "203.0.113.9").status_code == 429  # the limit is reached: locked
    locked = attempt(world.password, "203.0.113.9")  # even the right password, from there
    assert locked.status_code == 429 and "Too many failed logins" in locked.content.decode()
    # The real user, elsewhere, still gets in: the attacker cannot lock them out.
    assert attempt(world.password, "198.51.100.7").status_code == 302
    # And the attacker's address is not locked for other users.
    assert attempt(world.password, "203.0.113.9", username="bob").status_code == 302


@pytest.mark.parametrize("password", ["short1", "password123", "12345678901", "Alice123"])
def test_it_rejects_weak_passwords(world, password: str) -> None:
    with pytest.raises(ValidationError):
        validate_password(password, user=world.alice)


def test_it_passes_the_deployment_checklist_under_production_settings() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}  # the tests' own switch
    env |= {
        "DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(50), "ALLOWED_HOSTS": "chat.example.com",
        # Production refuses to start without its own audit key (issue 12); not the data dir's files.
        "AUDIT_HMAC_KEY": secrets.token_urlsafe(50),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
