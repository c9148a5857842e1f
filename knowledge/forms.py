"""The knowledge admin pages' forms: a knowledge base's settings and access, a source to sync."""

from __future__ import annotations

from django import forms

from knowledge.models import KnowledgeSource
from knowledge.selectors import knowledge_base_member_choices
from tenants.models import Role, Tenant


class KnowledgeBaseForm(forms.Form):
    name = forms.CharField(max_length=200)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    access_roles = forms.MultipleChoiceField(choices=Role.choices, required=False,
                                             widget=forms.CheckboxSelectMultiple, label="Roles that may chat with it")
    member_ids = forms.TypedMultipleChoiceField(coerce=int, required=False, label="Also these users",
                                                widget=forms.SelectMultiple(attrs={"size": 4}))
    chunk_max_tokens = forms.IntegerField(min_value=32, max_value=2048, initial=256, label="Chunk size (tokens)")
    chunk_overlap_tokens = forms.IntegerField(min_value=0, max_value=1000, initial=32, label="Overlap (tokens)")
    sensitive = forms.BooleanField(required=False, label="Sensitive: answer only with the local model")

    def __init__(self, *args: object, tenant: Tenant, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fields["member_ids"].choices = knowledge_base_member_choices(tenant)  # type: ignore[attr-defined]
        if not self.is_bound and "access_roles" not in self.initial:
            self.initial["access_roles"] = [r.value for r in Role]


class SourceForm(forms.Form):
    kind = forms.ChoiceField(choices=KnowledgeSource.Kind.choices)
    location = forms.CharField(max_length=2000, label="URL or folder")
    sync_interval_minutes = forms.IntegerField(min_value=5, max_value=7 * 24 * 60, initial=60,
                                               label="Re-sync every (minutes)")
