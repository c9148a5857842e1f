"""The app role's privileges, and row-level security on memberships.

Runs before the other apps' tables are created, so the default privileges cover them. The app
role gets plain DML, never TRUNCATE (which ignores row-level security) or ownership.
"""

from __future__ import annotations

from django.conf import settings
from django.db import migrations

from tenants.rls import TENANT, USER, drop_policy_sql, policy_sql


def forward_sql() -> str:
    app = settings.DB_APP_ROLE
    return f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{app}') THEN
    RAISE EXCEPTION 'role {app} is missing: CREATE ROLE {app} LOGIN NOSUPERUSER NOBYPASSRLS (see README)';
  END IF;
END $$;
GRANT USAGE ON SCHEMA public TO {app};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {app};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {app};
""" + policy_sql(
        "tenants_membership",
        # A user reads their own memberships in every tenant (to pick one); writes stay in-tenant.
        using=f"tenant_id = {TENANT} OR user_id = {USER}",
    )


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial")]
    run_before = [("chat", "0001_initial"), ("knowledge", "0001_initial"), ("audit", "0001_initial")]

    operations = [migrations.RunSQL(forward_sql(), drop_policy_sql("tenants_membership"))]
