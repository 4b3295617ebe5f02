"""Server-side stop flags, kept in Django's cache (process memory embedded, Redis scaled out)."""
import time

from django.core.cache import cache

TTL = 24 * 3600
# The generation loop asks at every step; the shared store is read at most this often.
POLL_SECONDS = 0.02


def _key(request_id):
    return f"smolsite:stop:{request_id}"


def request_stop(request_id):
    cache.set(_key(request_id), 1, TTL)


def clear_stop(request_id):
    cache.delete(_key(request_id))


def is_stop_requested(request_id):
    return bool(cache.get(_key(request_id)))


class StopChecker:
    """Callable checked every step; cheap because it only reads the store every POLL_SECONDS."""

    def __init__(self, request_id):
        self.request_id = request_id
        self._next_poll = 0.0
        self._stopped = False

    def __call__(self):
        if self._stopped:
            return True
        now = time.monotonic()
        if now >= self._next_poll:
            self._next_poll = now + POLL_SECONDS
            self._stopped = is_stop_requested(self.request_id)
        return self._stopped
