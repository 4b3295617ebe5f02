"""The account page: API keys (create, list, revoke; a new key is shown once), the user's usage
against their quotas, the export of all their conversations, and the deletion of the account."""
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.db.models import Sum
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from api.models import ApiKey
from chat.export import iter_zip, safe_name, user_conversations
from usage import quotas
from usage.models import UsageRecord

from .deletion import delete_user_data
from .forms import DeleteAccountForm, KeyForm
from .login_throttle import with_retry_after


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
        "retention_days": settings.SMOLSITE_RETENTION_DAYS,  # said next to the export
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


async def _stream(chunks):
    """Hand a synchronous generator's chunks out one by one to an ASGI server: Django would
    otherwise read a synchronous iterator into a list first (the whole zip in memory). Each
    step runs in the request's thread, which holds its database connection."""
    step = sync_to_async(next, thread_sensitive=True)
    try:
        while True:
            chunk = await step(chunks, None)
            if chunk is None:
                return
            if chunk:
                yield chunk
    finally:
        await sync_to_async(chunks.close, thread_sensitive=True)()


def _in_chunks(queryset, size=100):
    """The rows of ``queryset`` a hundred at a time, without a server-side cursor held open across
    the whole download (each chunk is its own query, by primary key)."""
    ids = list(queryset.values_list("pk", flat=True))
    for start in range(0, len(ids), size):
        yield from queryset.filter(pk__in=ids[start:start + size])


@login_required
@require_GET
def export_data(request):
    """All the user's conversations (chat, API and batch), each as JSON and Markdown, in a zip that
    is streamed as it is made (one conversation in memory at a time)."""
    user = request.user
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    name = f"smolsite-{safe_name(user.get_username(), 'user')}-{stamp}.zip"
    response = StreamingHttpResponse(_stream(iter_zip(_in_chunks(user_conversations(user)))),
                                     content_type="application/zip")
    response["Content-Disposition"] = content_disposition_header(True, name)
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_http_methods(["GET", "POST"])
def delete_account(request):
    form = DeleteAccountForm(request.user, request, request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = request.user
        username = user.get_username()
        delete_user_data(user)
        logout(request)
        response = render(request, "account/deleted.html", {"username": username})
        response["Cache-Control"] = "no-store"
        return response
    response = render(request, "account/delete.html", {"form": form}, status=400 if form.errors else 200)
    return with_retry_after(response, form)
