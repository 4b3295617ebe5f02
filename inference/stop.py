"""Server-side stop flags, kept in Django's cache (process memory embedded, Redis scaled out)."""
import logging
import time

from django.core.cache import cache

logger = logging.getLogger(__name__)
TTL = 24 * 3600
# The generation loop asks at every step; the shared store is read at most this often.
POLL_SECONDS = 0.02
UNREACHABLE_POLL_SECONDS = 1


def _key(request_id):
    return f"smolsite:stop:{request_id}"


def request_stop(request_id):
    cache.set(_key(request_id), 1, TTL)


def clear_stop(request_id):
    try:
        cache.delete(_key(request_id))
    except Exception as exc:  # a flag left behind expires with its TTL; the answer is saved already
        logger.warning("could not clear the stop flag of %s (%s: %s)", request_id, type(exc).__name__, exc)


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
            try:
                self._stopped = is_stop_requested(self.request_id)
            except Exception as exc:
                # The cache unreachable (Redis restarting) must not end the answer: generate on and
                # ask again a little later; a stop asked for meanwhile is seen once it is back.
                self._next_poll = now + UNREACHABLE_POLL_SECONDS
                logger.warning("could not read the stop flag of %s (%s: %s); generating on", self.request_id,
                               type(exc).__name__, exc)
        return self._stopped
