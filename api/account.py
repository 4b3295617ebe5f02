"""The account page: API keys (create, list, revoke; a new key is shown once) and the user's
usage against their quotas."""
from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db.models import Sum
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from usage import quotas
from usage.models import UsageRecord

from .models import ApiKey


class KeyForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the key is for, e.g. “laptop scripts”.")
    expires_in_days = forms.IntegerField(required=False, min_value=1, max_value=3650, label="Expires in (days)",
                                         help_text="Empty: never expires.")


def _context(user, form=None, new_key=None):
    summary = quotas.summary(user.pk)
    since = quotas.month_start(quotas.clock())
    by_model = (UsageRecord.objects.filter(user=user, created_at__gte=since).values("model", "source")
                .annotate(prompt=Sum("prompt_tokens"), cached=Sum("cached_tokens"),
                          completion=Sum("completion_tokens"), total=Sum("total_tokens")).order_by("model", "source"))
    return {
        "keys": ApiKey.objects.filter(user=user, revoked_at__isnull=True),
        "form": form or KeyForm(),
        "new_key": new_key,
        "usage": summary,
        "by_model": list(by_model),
        "now": timezone.now(),
        "retention_days": settings.SMOLSITE_RETENTION_DAYS,  # said next to the export (chat.account_data)
    }


@login_required
@require_GET
def account(request):
    return render(request, "account/account.html", _context(request.user))


@login_required
@require_POST
def create_key(request):
    form = KeyForm(request.POST)
    if not form.is_valid():
        return render(request, "account/account.html", _context(request.user, form=form), status=400)
    days = form.cleaned_data.get("expires_in_days")
    expires = timezone.now() + timedelta(days=days) if days else None
    key, raw = ApiKey.create_for(request.user, form.cleaned_data["name"], expires_at=expires)
    # Shown on this response only: the page says to copy it now; reloading does not show it again.
    response = render(request, "account/account.html", _context(request.user, new_key={"row": key, "raw": raw}))
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def revoke_key(request, pk):
    key = get_object_or_404(ApiKey, pk=pk, user=request.user)
    key.revoke()
    return redirect("account")
