"""Deleting an account with everything in it: what it runs is stopped first (apps that run
something for a user hear of it through chat.signals.account_closing), then its rows, its other
sessions, its entries in the shared cache and its conversations' state on the device workers."""
import logging

from django.db import transaction
from django.utils import timezone

from chat.limits import socket_cache_keys
from chat.models import Conversation, Message
from chat.signals import account_closing
from chat.socket_auth import recheck_sockets
from inference import dispatch, erasure

logger = logging.getLogger(__name__)


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
