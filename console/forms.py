from __future__ import annotations

from django import forms

from audit.selectors import retention_days
from console.services import RETENTION_FIELD, SETTINGS_FIELDS
from tenants.models import Role, Tenant


class UserCreateForm(forms.Form):
    username = forms.CharField(max_length=150)
    password = forms.CharField(widget=forms.PasswordInput, help_text="An initial password for the new user.")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.EMPLOYEE)


class TenantSettingsForm(forms.Form):
    # A plain form, not a ModelForm: validating must not change the tenant before the service
    # compares old and new values for the audit record.
    audit_retention_days = forms.IntegerField(min_value=1, max_value=3650, label="Audit retention (days)",
                                              help_text="Can only be lengthened.")
    quota_messages_per_user_day = forms.IntegerField(min_value=0, label="Messages per user per day (0: unlimited)")
    quota_tokens_per_month = forms.IntegerField(min_value=0, label="Generated tokens per month (0: unlimited)")
    sensitive = forms.BooleanField(required=False, label="Sensitive: answer only with the local model")

    @classmethod
    def for_tenant(cls, tenant: Tenant) -> TenantSettingsForm:
        initial: dict[str, object] = {name: getattr(tenant, name) for name in (*SETTINGS_FIELDS, "sensitive")}
        initial[RETENTION_FIELD] = retention_days(tenant.pk)
        return cls(initial=initial)
