"""The generated keys under the data dir: where they live, creating them once, reading them.

``./dsw run`` (and ``./dsw test``) create them on the first start, so a default installation never
runs on a key that is public in this repository; settings read them when the environment sets no
key. Like ``paths.py``, settings imports this module, so it imports only the standard library.

Layout under the data dir::

    secrets/            0700
      secret_key        0600, Django's SECRET_KEY (sessions, signing)
      audit_hmac_key    0600, the audit hash chain's key: separate, so that a leak of SECRET_KEY
                        (which signs cookies, and so is used everywhere) does not give it away
      pg_postgres_password, pg_dsw_owner_password, pg_dsw_app_password
                        0600, the embedded PostgreSQL's passwords, one per role (scram-sha-256:
                        the server trusts no connection). Created by ``ensure_postgres``, read by
                        settings (app and owner) and by the services package (superuser).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from deepseek_web.services.paths import normalize_data_dir

# 64 random bytes, URL-safe base64: 86 characters, well past Django's 50-character minimum.
KEY_BYTES = 64


def secrets_dir(data: Path | str) -> Path:
    return normalize_data_dir(data) / "secrets"


def secret_key_path(data: Path | str) -> Path:
    return secrets_dir(data) / "secret_key"


def audit_hmac_key_path(data: Path | str) -> Path:
    return secrets_dir(data) / "audit_hmac_key"


def pg_password_path(data: Path | str, role: str) -> Path:
    """Where the embedded PostgreSQL password of ``role`` (postgres, dsw_owner, dsw_app) lives."""
    return secrets_dir(data) / f"pg_{role}_password"


def read_secret(path: Path) -> str | None:
    """The key in ``path`` without surrounding whitespace; None when there is no such file."""
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def _create_once(path: Path) -> bool:
    # Written to a private temporary file, then hard-linked into place: link() never replaces an
    # existing file, and a reader never sees a half-written key. Two processes starting at once
    # both try; the first link wins and the other keeps it.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_urlsafe(KEY_BYTES) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        temporary.unlink(missing_ok=True)


def _ensure_files(data: Path | str, paths: tuple[Path, ...]) -> list[Path]:
    directory = secrets_dir(data)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # mkdir's mode is masked by the umask, and the directory may be older
    return [path for path in paths if not path.exists() and _create_once(path)]


def ensure_secret_files(data: Path | str) -> list[Path]:
    """Creates the directory (0700) and each missing key file (0600); an existing key is kept.

    Returns the files it created.
    """
    return _ensure_files(data, (secret_key_path(data), audit_hmac_key_path(data)))


def ensure_pg_password_files(data: Path | str, roles: tuple[str, ...]) -> list[Path]:
    """Like ``ensure_secret_files``, for the embedded PostgreSQL's role passwords."""
    return _ensure_files(data, tuple(pg_password_path(data, role) for role in roles))
