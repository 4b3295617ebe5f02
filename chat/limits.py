"""Per-user limits on the chat page, so one person (or one runaway script with their session)
cannot exhaust what everybody shares: chats, open sockets, resume frames (each re-reads and may
re-render a whole answer) and sends/regenerations/edits. Settings (0 turns a limit off):
SMOLSITE_MAX_CHATS_PER_USER, SMOLSITE_MAX_SOCKETS_PER_USER, SMOLSITE_RESUMES_PER_MINUTE and
SMOLSITE_ACTIONS_PER_MINUTE. Refusals are errors the page shows (an error frame, HTTP 429), never
a crashed socket.

Rates are django-ratelimit's fixed windows in the shared cache (the same counters the API's
quotas use). Open sockets are counted in the cache too, per user, each socket's entry expiring
unless its consumer renews it, so a web process that dies does not leave its sockets counted."""
import time
from contextlib import contextmanager

from django.conf import settings
from django.core.cache import cache
from django_ratelimit.core import get_usage


class LimitExceeded(Exception):
    def __init__(self, message, retry_after=None):
        super().__init__(message)
        self.retry_after = retry_after


def _rate(kind, user_id, per_minute, what):
    if not per_minute:
        return
    usage = get_usage(None, group=f"smolsite.chat.{kind}", key=lambda group, request: str(user_id),
                      rate=f"{per_minute}/m", increment=True)
    if usage and usage["should_limit"]:
        wait = max(1, usage["time_left"])
        raise LimitExceeded(f"Slow down: at most {per_minute} {what} a minute. Try again in {wait} s.", wait)


def check_action_rate(user_id):
    """A send, regenerate or edit (each starts a generation)."""
    _rate("actions", user_id, settings.SMOLSITE_ACTIONS_PER_MINUTE, "messages, regenerations and edits")


def check_resume_rate(user_id):
    _rate("resumes", user_id, settings.SMOLSITE_RESUMES_PER_MINUTE, "catch-ups (resume frames)")


def check_new_chat(user):
    """Before creating a chat on the chat page (API requests and batch lines are not counted)."""
    limit = settings.SMOLSITE_MAX_CHATS_PER_USER
    if limit and user.conversations.filter(source="chat").count() >= limit:
        raise LimitExceeded(f"You have {limit:,} chats, the most one account may keep: delete some "
                            "to start a new one.")


# ---- open sockets ---------------------------------------------------------------------------------
def _ttl():
    """An entry lives this long unless renewed (each consumer renews its own at every idle auth
    re-check, chat.socket_auth)."""
    return max(60.0, 3 * settings.SMOLSITE_WS_AUTH_SECONDS)


def _sockets_key(user_id):
    return f"smolsite:sockets:{user_id}"


def socket_cache_keys(user_id):
    """Every cache key that is this user's (deleted with their account, accounts.deletion)."""
    return [_sockets_key(user_id), _lock_key(user_id)]


def _lock_key(user_id):
    return f"smolsite:sockets-lock:{user_id}"


def _live(entries, now):
    return {name: expiry for name, expiry in (entries or {}).items() if expiry > now}


@contextmanager
def _user_lock(user_id):
    """The user's socket entries are read, changed and written back under a short lock in the
    cache (an atomic add), so tabs opened at the same moment cannot both take the last place. A
    lock that cannot be had within three seconds (its holder died) is gone after LOCK_SECONDS anyway."""
    key = _lock_key(user_id)
    held = False
    for _ in range(150):
        held = cache.add(key, 1, LOCK_SECONDS)
        if held:
            break
        time.sleep(0.02)
    try:
        yield
    finally:
        if held:
            cache.delete(key)


LOCK_SECONDS = 5


def _write(key, entries):
    cache.set(key, entries, _ttl() * 2)


def open_socket(user_id, channel_name):
    """Counts a new socket of this user; raises LimitExceeded when they have the most already."""
    limit = settings.SMOLSITE_MAX_SOCKETS_PER_USER
    key = _sockets_key(user_id)
    with _user_lock(user_id):
        now = time.time()
        entries = _live(cache.get(key), now)
        if limit and len(entries) >= limit:
            raise LimitExceeded(f"You have {len(entries)} chat tabs open, the most one account may have: "
                                "close one and reload this page.")
        entries[channel_name] = now + _ttl()
        _write(key, entries)


def renew_socket(user_id, channel_name):
    key = _sockets_key(user_id)
    with _user_lock(user_id):
        now = time.time()
        entries = _live(cache.get(key), now)
        entries[channel_name] = now + _ttl()
        _write(key, entries)


def close_socket(user_id, channel_name):
    key = _sockets_key(user_id)
    with _user_lock(user_id):
        entries = _live(cache.get(key), time.time())
        if entries.pop(channel_name, None) is not None:
            _write(key, entries)
