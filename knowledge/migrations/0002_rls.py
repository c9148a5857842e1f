from __future__ import annotations

from django.db import migrations

from tenants.rls import drop_policy_sql, policy_sql

TABLES = ["knowledge_knowledgebase", "knowledge_document", "knowledge_chunk"]


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0001_initial"), ("tenants", "0002_app_role_and_rls")]

    operations = [migrations.RunSQL(policy_sql(t), drop_policy_sql(t)) for t in TABLES]
