"""A user's own data from the account page: export every conversation as a zip, and delete the
account with everything in it."""
import logging

from asgiref.sync import sync_to_async
from django import forms
from django.contrib.auth import get_user_model, logout
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_GET, require_http_methods

from inference import dispatch, erasure

from .export import iter_zip, safe_name, user_conversations
from .login_throttle import LoginAttempt, Throttled, with_retry_after
from .models import Conversation, Message
from .signals import account_closing
from .socket_auth import recheck_sockets

logger = logging.getLogger(__name__)


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


class DeleteAccountForm(forms.Form):
    password = forms.CharField(widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
                               label="Your password", help_text="To confirm it is you.")
    confirm = forms.BooleanField(label="I understand that my chats, API keys, batches and usage records are "
                                       "deleted for good.")

    throttled = None

    def __init__(self, user, request, *args, **kwargs):
        self.user, self.request = user, request
        super().__init__(*args, **kwargs)

    def clean_password(self):
        # A password check like a sign-in's, so throttled like one: a borrowed session must not
        # become a way to guess the password without limit.
        password = self.cleaned_data["password"]
        attempt = LoginAttempt(self.request, self.user.get_username(), "delete_account")
        try:
            attempt.begin()
        except Throttled as exc:
            self.throttled = exc
            raise forms.ValidationError(str(exc)) from None
        if not self.user.check_password(password):
            raise forms.ValidationError("That is not your password.")
        attempt.clear()
        return password

    def clean(self):
        cleaned = super().clean()
        others = get_user_model().objects.filter(is_superuser=True, is_active=True).exclude(pk=self.user.pk)
        if self.user.is_superuser and not others.exists():
            raise forms.ValidationError("You are the only administrator: make someone else an administrator "
                                        "(in /admin/) before deleting your account.")
        return cleaned


def _stop_everything(user):
    """Stop the user's answers and batches before their rows go, so no worker keeps generating
    for a deleted account."""
    account_closing.send(sender=type(user), user=user)
    active = Message.objects.filter(conversation__owner=user, status__in=Message.ACTIVE).values_list("pk", flat=True)
    for message_id in active:
        dispatch.stop(str(message_id))


def _forget_sessions(user_id):
    """The user's other sessions (other browsers, devices): their rows name the user and hold
    admin reasons. Only a database-backed session store can be searched for them; a session in a
    signed cookie lives in that browser only and no longer names a user who exists."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.sessions.models import Session

    if not settings.SESSION_ENGINE.endswith(("backends.db", "backends.cached_db")):
        return 0
    store = import_module(settings.SESSION_ENGINE).SessionStore
    deleted = 0
    for row in Session.objects.filter(expire_date__gt=timezone.now()).iterator():
        if row.get_decoded().get("_auth_user_id") == str(user_id):
            store(session_key=row.session_key).delete()  # the row, and its cached copy (cached_db)
            deleted += 1
    return deleted


def _forget_cached(user_id):
    """Per-user entries in the shared cache: the open-socket register (it names the user's socket
    channels) and its lock. The rate counters (django-ratelimit) hold a number under a one-way
    hash and end with their minute; a user id is never reused, so they are left to expire."""
    from django.core.cache import cache

    from .limits import socket_cache_keys

    cache.delete_many(socket_cache_keys(user_id))


def delete_user_data(user):
    """Delete ``user`` and everything that is theirs: conversations and messages, API keys, batches
    with their lines and their files (stored in the database: rows and bytes), quotas and usage
    records (all cascade from the user), their other sessions and their entries in the shared
    cache. Their open chat sockets are told at once. Returns the number of rows deleted per model."""
    user_id = user.pk
    conversation_ids = list(Conversation.objects.filter(owner=user).values_list("pk", flat=True))
    _stop_everything(user)
    with transaction.atomic():
        _, counts = user.delete()
    sessions = _forget_sessions(user_id)
    if sessions:
        counts["sessions.Session"] = sessions
    _forget_cached(user_id)
    erasure.forget_user(user_id)  # their cached conversation state on the device workers
    recheck_sockets(conversation_ids)
    logger.info("account deleted: %s", ", ".join(f"{n} {label}" for label, n in sorted(counts.items()) if n))
    return counts


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
