"""Append-only audit storage: triggers for everyone, and an application role that may only
INSERT and SELECT. Retention prunes through one SECURITY DEFINER function, which enforces the
tenant's retention itself, so the application can never remove recent events."""

from __future__ import annotations

from django.conf import settings
from django.db import migrations

from tenants.rls import TENANT, drop_policy_sql, policy_sql

EVENT = "audit_auditevent"
CHECKPOINT = "audit_auditcheckpoint"
HEAD = "audit_audithead"


def forward_sql() -> str:
    role = settings.DB_APP_ROLE
    retention = int(settings.AUDIT_DEFAULT_RETENTION_DAYS)
    return f"""
CREATE OR REPLACE FUNCTION audit_reject_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  -- Retention deletes through audit_prune(), which sets this flag for its own transaction only.
  IF TG_OP = 'DELETE' AND TG_TABLE_NAME = '{EVENT}' AND current_setting('audit.pruning', true) = 'on' THEN
    RETURN OLD;
  END IF;
  -- The test runner empties the test database between tests (Django's flush, run by the owner).
  IF TG_OP = 'TRUNCATE' AND current_setting('audit.flush', true) = 'on' THEN
    RETURN NULL;
  END IF;
  RAISE EXCEPTION 'the audit trail is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END $fn$;

CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON {EVENT}
  FOR EACH ROW EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON {EVENT}
  FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_checkpoint_append_only BEFORE UPDATE OR DELETE ON {CHECKPOINT}
  FOR EACH ROW EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_checkpoint_no_truncate BEFORE TRUNCATE ON {CHECKPOINT}
  FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();

REVOKE ALL ON {EVENT}, {CHECKPOINT}, {HEAD} FROM PUBLIC, {role};
GRANT SELECT, INSERT ON {EVENT} TO {role};
GRANT SELECT ON {CHECKPOINT} TO {role};
GRANT SELECT, INSERT, UPDATE ON {HEAD} TO {role};
GRANT USAGE, SELECT ON SEQUENCE audit_auditevent_id_seq, audit_auditcheckpoint_id_seq TO {role};

CREATE OR REPLACE FUNCTION audit_prune(p_chain bigint, p_upto bigint, p_hash text, p_mac text)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
DECLARE
  cutoff timestamptz;
  removed bigint;
BEGIN
  -- The retention comes from the tenant row, not from the caller.
  SELECT clock_timestamp() - make_interval(days => COALESCE(
           (SELECT audit_retention_days FROM tenants_tenant WHERE id = p_chain), {retention}))
    INTO cutoff;
  IF NOT EXISTS (SELECT 1 FROM {EVENT} WHERE COALESCE(tenant_id, 0) = p_chain AND seq = p_upto
                 AND hash = p_hash AND occurred_at < cutoff) THEN
    RAISE EXCEPTION 'audit_prune: event % of chain % is not an expired event with that hash', p_upto, p_chain;
  END IF;
  IF EXISTS (SELECT 1 FROM {EVENT} WHERE COALESCE(tenant_id, 0) = p_chain AND seq <= p_upto
             AND occurred_at >= cutoff) THEN
    RAISE EXCEPTION 'audit_prune: the prefix up to % holds events inside the retention period', p_upto;
  END IF;
  PERFORM set_config('audit.pruning', 'on', true);
  DELETE FROM {EVENT} WHERE COALESCE(tenant_id, 0) = p_chain AND seq <= p_upto;
  GET DIAGNOSTICS removed = ROW_COUNT;
  PERFORM set_config('audit.pruning', 'off', true);
  INSERT INTO {CHECKPOINT} (chain, seq, hash, pruned, created_at, mac)
    VALUES (p_chain, p_upto, p_hash, removed, now(), p_mac);
  RETURN removed;
END $fn$;
REVOKE ALL ON FUNCTION audit_prune(bigint, bigint, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_prune(bigint, bigint, text, text) TO {role};
""" + policy_sql(
        EVENT,
        # tenant_id NULL is the platform chain, visible in the context of "tenant" 0.
        using=f"tenant_id = {TENANT} OR (tenant_id IS NULL AND {TENANT} = 0)",
        check=f"tenant_id = {TENANT} OR (tenant_id IS NULL AND {TENANT} = 0)",
    )


REVERSE_SQL = drop_policy_sql(EVENT) + f"""
DROP FUNCTION IF EXISTS audit_prune(bigint, bigint, text, text);
DROP TRIGGER IF EXISTS audit_event_append_only ON {EVENT};
DROP TRIGGER IF EXISTS audit_event_no_truncate ON {EVENT};
DROP TRIGGER IF EXISTS audit_checkpoint_append_only ON {CHECKPOINT};
DROP TRIGGER IF EXISTS audit_checkpoint_no_truncate ON {CHECKPOINT};
DROP FUNCTION IF EXISTS audit_reject_change();
"""


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial"), ("tenants", "0002_app_role_and_rls")]

    operations = [migrations.RunSQL(forward_sql(), REVERSE_SQL)]
