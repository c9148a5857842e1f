"""Every audited action, in one place. `audit_record` refuses an action that is not listed here,
and the completeness test runs each one and expects exactly one matching event."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AuditedAction:
    name: str
    # Elastic Common Schema event.category: authentication, iam, configuration, database, web...
    category: str
    description: str


CATALOGUE: dict[str, AuditedAction] = {
    a.name: a
    for a in [
        AuditedAction("auth.login", "authentication", "A user logged in."),
        AuditedAction("auth.login_failed", "authentication", "A login attempt failed."),
        AuditedAction("auth.logout", "authentication", "A user logged out."),
        AuditedAction("tenant.create", "iam", "A tenant was created."),
        AuditedAction("membership.create", "iam", "A user was added to a tenant with a role."),
        AuditedAction("user.create", "iam", "A tenant owner created a user account."),
        AuditedAction("membership.role_change", "iam", "A member's role was changed."),
        AuditedAction("membership.deactivate", "iam", "A member was deactivated."),
        AuditedAction("membership.activate", "iam", "A member was reactivated."),
        AuditedAction("tenant.settings_update", "configuration", "A tenant's settings or quotas changed."),
        AuditedAction("tenant.sensitivity_change", "configuration",
                      "A tenant was marked sensitive (answered only by the local model) or unmarked."),
        AuditedAction("tenant.scheduling_set", "configuration",
                      "The platform changed a tenant's share of the GPU (its scheduling weight)."),
        AuditedAction("tenant.switch", "iam", "A user switched their active tenant."),
        AuditedAction("admin.add", "configuration", "An object was added in Django admin."),
        AuditedAction("admin.change", "configuration", "An object was changed in Django admin."),
        AuditedAction("admin.delete", "configuration", "An object was deleted in Django admin."),
        AuditedAction("conversation.create", "database", "A conversation was started."),
        AuditedAction("conversation.rename", "database", "A conversation was renamed."),
        AuditedAction("conversation.delete", "database", "A conversation and its messages were deleted."),
        AuditedAction("message.submit", "database", "A user sent a message to the assistant."),
        AuditedAction("message.cancel", "database", "A user stopped an answer."),
        AuditedAction("message.fail_stale", "process", "A turn whose worker died was ended as failed."),
        AuditedAction("knowledge_base.create", "configuration", "A knowledge base was created."),
        AuditedAction("knowledge_base.update", "configuration", "A knowledge base's settings or access changed."),
        AuditedAction("knowledge_base.sensitivity_change", "configuration",
                      "A knowledge base was marked sensitive (answered only by the local model) or unmarked."),
        AuditedAction("knowledge_base.delete", "configuration", "A knowledge base and its documents were deleted."),
        AuditedAction("document.upload", "file", "A document was uploaded or fetched (new, new version, or unchanged)."),
        AuditedAction("document.reject", "file", "An uploaded file was refused before ingestion, with the reason."),
        AuditedAction("document.chunk", "process", "A document was parsed and split into chunks."),
        AuditedAction("document.ready", "process", "A document's chunks were embedded; it is searchable."),
        AuditedAction("document.fail", "process", "A document's ingestion failed, with the reason."),
        AuditedAction("document.retry", "process", "A failed document's ingestion was started again."),
        AuditedAction("document.delete", "file", "A document and its chunks were deleted."),
        AuditedAction("document.view", "database", "A user opened a document (a cited source)."),
        AuditedAction("source.create", "configuration", "A URL or folder source was added to a knowledge base."),
        AuditedAction("source.delete", "configuration", "A URL or folder source was removed."),
        AuditedAction("source.sync", "process", "A source was re-synced: documents added, changed or removed."),
        AuditedAction("conversation.knowledge_bases", "database", "A conversation's knowledge bases were chosen."),
        AuditedAction("message.retrieve", "database",
                      "Data access: which chunks of which documents went into an answer."),
        AuditedAction("api_key.create", "iam", "A tenant owner created an API key (acting as a chosen member)."),
        AuditedAction("api_key.revoke", "iam", "A tenant owner revoked an API key."),
        AuditedAction("audit.view", "iam", "A compliance user read the audit trail or one event."),
        AuditedAction("audit.export", "iam", "A compliance user exported the audit trail."),
        AuditedAction("audit.prune", "configuration", "Retention removed a verified prefix of the trail."),
        AuditedAction("audit.retention_set", "configuration", "The platform set a chain's audit retention."),
    ]
}


def category_of(action: str) -> str:
    return CATALOGUE[action].category
