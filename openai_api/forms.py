from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import User

from openai_api.selectors import api_key_users
from tenants.models import Tenant


class MemberChoiceField(forms.ModelChoiceField):  # type: ignore[type-arg]
    def label_from_instance(self, obj: User) -> str:
        return obj.get_username()


class ApiKeyCreateForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Where the key is used, e.g. \"CI bot\".")
    user = MemberChoiceField(queryset=User.objects.none(), label="Acts as",
                             help_text="Requests with the key see what this member may see.")

    def __init__(self, *args: Any, tenant: Tenant, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["user"]
        assert isinstance(field, MemberChoiceField)
        field.queryset = api_key_users(tenant=tenant)
