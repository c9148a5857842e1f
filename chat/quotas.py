"""Chat usage against the tenant's quotas: messages per user per day, generated tokens per month.

The limits are the tenant's settings (`Tenant.quota_*`); the usage is counted from chat's own
messages, so the counting lives here, with the messages, and the tenancy app knows nothing of chat.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Sum
from django.utils import timezone

from chat.models import Message
from tenants.models import Tenant


@dataclass(frozen=True)
class Usage:
    used: int
    limit: int  # 0: unlimited

    @property
    def exceeded(self) -> bool:
        return self.limit > 0 and self.used >= self.limit


def _day_start() -> datetime:
    return timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)


def _month_start() -> datetime:
    return _day_start().replace(day=1)


def messages_today(*, tenant: Tenant, user_id: int) -> Usage:
    used = Message.objects.filter(tenant=tenant, conversation__user_id=user_id, role=Message.Role.USER,
                                  created_at__gte=_day_start()).count()
    return Usage(used, tenant.quota_messages_per_user_day)


def tokens_this_month(*, tenant: Tenant) -> Usage:
    used = Message.objects.filter(tenant=tenant, role=Message.Role.ASSISTANT,
                                  created_at__gte=_month_start()).aggregate(total=Sum("token_count"))["total"]
    return Usage(int(used or 0), tenant.quota_tokens_per_month)


def messages_today_by_user(*, tenant: Tenant) -> dict[int, int]:
    rows = (Message.objects.filter(tenant=tenant, role=Message.Role.USER, created_at__gte=_day_start())
            .values("conversation__user_id").annotate(n=Count("id")))
    return {row["conversation__user_id"]: row["n"] for row in rows}
