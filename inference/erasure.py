"""A deleted account's cached conversation state leaves every device worker too: the web process
notes the user's engine keys in the shared cache, and each worker's reporter thread (which
already wakes every few seconds) hands keys it has not seen yet to its loaded backends. The
note stays for a day, longer than any worker takes to look."""
import time

from django.core.cache import cache

KEY = "smolsite:forget-users"
KEEP_SECONDS = 24 * 3600
MOST = 1000  # notes kept (oldest dropped first)


def user_keys(user_id):
    """The keys the engine knows a user by (chat.store): their chats' and their batch lines'."""
    return [f"user-{user_id}", f"user-{user_id}:batch"]


def forget_user(user_id):
    now = time.time()
    notes = [n for n in (cache.get(KEY) or []) if now - n[1] < KEEP_SECONDS]
    notes += [(key, now) for key in user_keys(user_id)]
    cache.set(KEY, notes[-MOST:], KEEP_SECONDS)


def apply_pending(forget_fn, seen):
    """Hand ``forget_fn`` the noted keys not in ``seen`` (a set the caller keeps)."""
    fresh = {key for key, _ in (cache.get(KEY) or [])} - seen
    if fresh:
        forget_fn(fresh)
        seen |= fresh
