"""Knowledge bases: uploads and synced sources, parsed, chunked and embedded for cited answers."""

from __future__ import annotations
