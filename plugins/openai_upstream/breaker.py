"""A circuit breaker per upstream, in Django's cache (Redis when scaled out, so every process
agrees). Open: requests to the upstream end at once with a clear error instead of waiting on it.
A failed probe, a timeout or FAILURES failed requests in a row open it; only a successful probe
closes it (discovery.py probes every SMOLSITE_UPSTREAM_PROBE_SECONDS)."""
import threading
import time

from django.core.cache import cache

FAILURES = 3
TTL = 24 * 3600

# When each upstream last sent this process bytes of an answer: an engine that serialises requests
# (llama-cpp-python's server answers /models only between answers) may let a probe time out while
# it streams to us, and that is no sign of a hang.
_progress = {}
_progress_lock = threading.Lock()


def progress(name):
    with _progress_lock:
        _progress[name] = time.monotonic()


def streamed_within(name, seconds):
    with _progress_lock:
        at = _progress.get(name)
    return at is not None and time.monotonic() - at <= seconds


def _key(name):
    return f"smolsite:upstream:breaker:{name}"


def state(name):
    """{"open": bool, "failures": int, "since": time, "error": str}; closed when never seen."""
    return cache.get(_key(name)) or {"open": False, "failures": 0, "since": 0.0, "error": ""}


def states(names):
    found = cache.get_many([_key(n) for n in names])
    return {n: found.get(_key(n)) or {"open": False, "failures": 0, "since": 0.0, "error": ""} for n in names}


def is_open(name):
    return state(name)["open"]


def trip(name, error):
    """Open at once (a timeout, a failed probe)."""
    current = state(name)
    if current["open"] and current["error"] == error:
        return
    cache.set(_key(name), {"open": True, "failures": current["failures"] + 1,
                           "since": current["since"] if current["open"] else time.time(), "error": error}, TTL)


def failure(name, error):
    """A failed request: opens after FAILURES in a row."""
    current = state(name)
    failures = current["failures"] + 1
    if failures >= FAILURES:
        trip(name, error)
    else:
        cache.set(_key(name), {**current, "failures": failures, "error": error}, TTL)


def success(name, probe=False):
    """A request that worked resets the count; only a probe closes an open breaker."""
    current = state(name)
    if current["open"] and not probe:
        return
    if current["open"] or current["failures"]:
        cache.set(_key(name), {"open": False, "failures": 0, "since": time.time(), "error": ""}, TTL)
