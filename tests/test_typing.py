"""House style: every module is annotated and mypy (with django-stubs) passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["deepseek_web", "tenants", "chat", "audit", "knowledge", "inference", "openai_api", "tests"]


def test_it_type_checks_with_mypy() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", *PACKAGES], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
