"""Tenant.schedule_weight: a tenant's share of the GPU while turns wait (chat.dispatch)."""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("tenants", "0005_remove_tenant_audit_retention_days")]

    operations = [
        migrations.AddField(
            model_name="tenant",
            name="schedule_weight",
            field=models.PositiveSmallIntegerField(default=1),
        ),
    ]
