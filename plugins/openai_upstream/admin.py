"""Upstream servers in Django admin. The API key is write-only: the form never renders it, no list,
log entry or export shows it, and an empty field keeps the stored key. Rows from
SMOLSITE_UPSTREAMS are read-only here. A save is used at the next probe (no restart)."""
from django import forms
from django.contrib import admin

from .models import UpstreamServer


class UpstreamForm(forms.ModelForm):
    api_key = forms.CharField(label="API key", required=False, strip=True,
                              widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
                              help_text="Write-only: never shown again. Leave empty to keep the stored key.")
    clear_api_key = forms.BooleanField(label="Remove the stored key", required=False)

    class Meta:
        model = UpstreamServer
        fields = ["name", "base_url", "api_key", "clear_api_key", "models", "prefix", "max_concurrency",
                  "connect_timeout", "read_timeout", "n_ctx", "tokenizer", "structured_output", "tools", "enabled"]

    def clean_api_key(self):
        value = self.cleaned_data.get("api_key") or ""
        return value if value else (self.instance.api_key if self.instance.pk else "")

    def clean(self):
        data = super().clean()
        if data.get("clear_api_key"):
            data["api_key"] = ""
        return data


@admin.register(UpstreamServer)
class UpstreamServerAdmin(admin.ModelAdmin):
    form = UpstreamForm
    list_display = ["name", "base_url", "enabled", "max_concurrency", "key_set", "from_env"]
    list_filter = ["enabled", "from_env"]
    search_fields = ["=name"]

    @admin.display(boolean=True, description="key set")
    def key_set(self, obj):
        return bool(obj.api_key) or obj.from_env

    def has_change_permission(self, request, obj=None):
        if obj is not None and obj.from_env:
            return False  # configured by SMOLSITE_UPSTREAMS: shown, not edited here
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.from_env:
            return False
        return super().has_delete_permission(request, obj)

    def get_fields(self, request, obj=None):
        if obj is not None and obj.from_env:
            return [f for f in self.form.Meta.fields if f not in ("api_key", "clear_api_key")] + ["from_env"]
        return super().get_fields(request, obj)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        _refresh()

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        _refresh()


def _refresh():
    from .discovery import get_discovery

    d = get_discovery(start=False)
    if d is not None:  # this process runs the probes: now rather than at the next period
        d.refresh()
