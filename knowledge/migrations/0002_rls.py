"""Row-level security on the first knowledge tables (see tenants.rls).

The SQL is written out as tenants.rls.policy_sql/drop_policy_sql produced it when this migration was
made, so the history stays as it ran even when those helpers change.
"""

from __future__ import annotations

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0001_initial"), ("tenants", "0002_app_role_and_rls")]

    operations = [
        migrations.RunSQL(
            """
ALTER TABLE knowledge_knowledgebase ENABLE ROW LEVEL SECURITY;
ALTER TABLE knowledge_knowledgebase FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON knowledge_knowledgebase USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::bigint) WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::bigint);
""",
            "DROP POLICY IF EXISTS tenant_isolation ON knowledge_knowledgebase; ALTER TABLE knowledge_knowledgebase DISABLE ROW LEVEL SECURITY;",
        ),
        migrations.RunSQL(
            """
ALTER TABLE knowledge_document ENABLE ROW LEVEL SECURITY;
ALTER TABLE knowledge_document FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON knowledge_document USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::bigint) WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::bigint);
""",
            "DROP POLICY IF EXISTS tenant_isolation ON knowledge_document; ALTER TABLE knowledge_document DISABLE ROW LEVEL SECURITY;",
        ),
        migrations.RunSQL(
            """
ALTER TABLE knowledge_chunk ENABLE ROW LEVEL SECURITY;
ALTER TABLE knowledge_chunk FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON knowledge_chunk USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::bigint) WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::bigint);
""",
            "DROP POLICY IF EXISTS tenant_isolation ON knowledge_chunk; ALTER TABLE knowledge_chunk DISABLE ROW LEVEL SECURITY;",
        ),
    ]
