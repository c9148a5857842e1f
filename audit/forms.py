from __future__ import annotations

from django import forms

from audit.catalogue import CATALOGUE
from audit.models import Outcome


class AuditFilterForm(forms.Form):
    start = forms.DateTimeField(required=False, label="From", widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    end = forms.DateTimeField(required=False, label="To", widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    actor = forms.CharField(required=False, max_length=150, help_text="user name or id")
    action = forms.CharField(required=False, max_length=100, widget=forms.TextInput(attrs={"list": "audit-actions"}))
    target = forms.CharField(required=False, max_length=300, help_text="type or type:id")
    outcome = forms.ChoiceField(required=False, choices=[("", "any"), *Outcome.choices])

    actions = sorted(CATALOGUE)

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        if data.get("start") and data.get("end") and data["start"] >= data["end"]:
            raise forms.ValidationError("“From” must be before “To”.")
        return data
