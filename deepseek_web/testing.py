"""Support for the test suite (not imported by the product)."""

from __future__ import annotations

from django.contrib.auth.hashers import PBKDF2PasswordHasher


class FastPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """The real PBKDF2 hasher with few iterations, so creating test users costs milliseconds.

    Hashes keep the standard `pbkdf2_sha256$<iterations>$...` form, so a server process running
    the default settings (daphne in the browser tests) still verifies them.
    """

    iterations = 1000
