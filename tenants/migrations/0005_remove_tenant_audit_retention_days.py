from __future__ import annotations

from django.db import migrations


class Migration(migrations.Migration):
    """The retention moved to audit_auditretention (audit 0003), which the app role cannot write."""

    dependencies = [("tenants", "0004_tenant_sensitive"), ("audit", "0003_retention_heads")]

    operations = [migrations.RemoveField(model_name="tenant", name="audit_retention_days")]
