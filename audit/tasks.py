from __future__ import annotations

import logging

from celery import shared_task

from audit import services
from audit.chain import chains, verify_chain

logger = logging.getLogger(__name__)


@shared_task(name="audit.tasks.verify_chains")
def verify_chains() -> int:
    broken = 0
    for chain in chains():
        report = verify_chain(chain)
        if not report.ok:
            broken += 1
            logger.error("audit chain broken: %s", report.describe())
    return broken


@shared_task(name="audit.tasks.prune_expired")
def prune_expired() -> int:
    return sum(services.audit_prune_expired(chain=chain) for chain in chains())
