"""Retention the application cannot shorten, pruning only by the privileged role, heads that only
move forward.

- `audit_auditretention` (model AuditRetention): the application role may only SELECT it. The
  retention used to live on `tenants_tenant`, which the application role may UPDATE: setting it
  to 0 and calling `audit_prune` erased a trail. The values move here, raised to the floor.
- `audit_retention_lengthen(chain, days)`: what an owner's console can do, for the current
  tenant only, and only upwards.
- `audit_prune` now reads the retention from that table, and only the owner role (the privileged
  prune job, which verifies the chain and makes the checkpoint MAC itself) may execute it.
- A trigger refuses any head update that does not move the head forward, and any head delete:
  truncating the newest events and writing an old head back is refused (and, done as superuser
  with triggers off, caught by the anchors outside the database: audit/anchors.py).
"""

from __future__ import annotations

from django.conf import settings
from django.db import migrations, models

EVENT = "audit_auditevent"
CHECKPOINT = "audit_auditcheckpoint"
HEAD = "audit_audithead"
RETENTION = "audit_auditretention"


def prune_function_sql(retention_sql: str) -> str:
    """`audit_prune`, reading a chain's retention in days with `retention_sql` (forward: the
    platform's table; reverse: the tenant column it had before)."""
    default = int(settings.AUDIT_DEFAULT_RETENTION_DAYS)
    return f"""CREATE OR REPLACE FUNCTION audit_prune(p_chain bigint, p_upto bigint, p_hash text, p_mac text)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
DECLARE
  cutoff timestamptz;
  removed bigint;
BEGIN
  -- The retention comes from the database, not from the caller.
  SELECT clock_timestamp() - make_interval(days => COALESCE(({retention_sql}), {default}))
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
"""


def forward_sql() -> str:
    role = settings.DB_APP_ROLE
    default = int(settings.AUDIT_DEFAULT_RETENTION_DAYS)
    floor = int(settings.AUDIT_MIN_RETENTION_DAYS)
    return f"""
REVOKE ALL ON {RETENTION} FROM PUBLIC, {role};
GRANT SELECT ON {RETENTION} TO {role};
INSERT INTO {RETENTION} (chain, days, updated_at)
  SELECT id, GREATEST(audit_retention_days, {floor}), now() FROM tenants_tenant;

CREATE OR REPLACE FUNCTION audit_retention_lengthen(p_chain bigint, p_days integer)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
DECLARE
  kept integer;
BEGIN
  IF p_chain IS DISTINCT FROM NULLIF(current_setting('app.tenant_id', true), '')::bigint THEN
    RAISE EXCEPTION 'audit_retention_lengthen: chain % is not the current tenant', p_chain
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  INSERT INTO {RETENTION} AS r (chain, days, updated_at) VALUES (p_chain, GREATEST(p_days, {default}), now())
    ON CONFLICT (chain) DO UPDATE SET days = GREATEST(r.days, EXCLUDED.days), updated_at = now()
    RETURNING days INTO kept;
  RETURN kept;
END $fn$;
REVOKE ALL ON FUNCTION audit_retention_lengthen(bigint, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_retention_lengthen(bigint, integer) TO {role};

{prune_function_sql(f"SELECT days FROM {RETENTION} WHERE chain = p_chain")}
-- Only the owner role (the function's owner) may prune now: the application role could call it
-- with a MAC of its choosing.
REVOKE ALL ON FUNCTION audit_prune(bigint, bigint, text, text) FROM PUBLIC, {role};

CREATE OR REPLACE FUNCTION audit_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF TG_OP = 'DELETE' THEN
    RAISE EXCEPTION 'the audit head of chain % cannot be deleted', OLD.chain
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF NEW.chain <> OLD.chain OR NEW.seq <= OLD.seq THEN
    RAISE EXCEPTION 'the audit head of chain % only moves forward (% -> %)', OLD.chain, OLD.seq, NEW.seq
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END $fn$;
CREATE TRIGGER audit_head_forward_only BEFORE UPDATE OR DELETE ON {HEAD}
  FOR EACH ROW EXECUTE FUNCTION audit_head_forward_only();
"""


def reverse_sql() -> str:
    role = settings.DB_APP_ROLE
    return f"""
DROP TRIGGER IF EXISTS audit_head_forward_only ON {HEAD};
DROP FUNCTION IF EXISTS audit_head_forward_only();
DROP FUNCTION IF EXISTS audit_retention_lengthen(bigint, integer);
UPDATE tenants_tenant t SET audit_retention_days = r.days FROM {RETENTION} r WHERE r.chain = t.id;
{prune_function_sql("SELECT audit_retention_days FROM tenants_tenant WHERE id = p_chain")}
GRANT EXECUTE ON FUNCTION audit_prune(bigint, bigint, text, text) TO {role};
"""


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_append_only"), ("tenants", "0004_tenant_sensitive")]

    operations = [
        migrations.CreateModel(
            name="AuditRetention",
            fields=[
                ("chain", models.BigIntegerField(primary_key=True, serialize=False)),
                ("days", models.PositiveIntegerField()),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
        ),
        migrations.RunSQL(forward_sql(), reverse_sql()),
    ]
