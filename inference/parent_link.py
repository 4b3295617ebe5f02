"""A device-worker child process's link to the web process that started it (inference.worker_process).

In the embedded mode the consumers wait on the web process's in-memory channel layer, and the
web process's local-memory cache is the shared one (heartbeats, metrics), as Redis is when
scaled out; another process can reach neither. So the child's channel layer sends each
``group_send`` down the pipe, for the web process (inference.supervisor) to replay on its layer,
and the child's cache asks the web process's cache, except for stop flags: the decode loop polls
those every few milliseconds, so they stay in the child, which hears of stops over the pipe.
"""
import itertools
import threading

from channels.layers import BaseChannelLayer
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.cache.backends.locmem import LocMemCache

CALL_TIMEOUT = 30
# Cache methods the web process answers for a child (inference.supervisor checks this list).
CACHE_METHODS = ("add", "get_many", "set", "touch", "delete", "has_key", "incr")
LOCAL_KEY_PREFIXES = ("smolsite:stop:",)

_conn = None
# One pipe, written by the publishing loop and by every job thread: frames must not interleave.
_send_lock = threading.Lock()
_calls = {}  # call id -> [threading.Event, ok, value]
_call_ids = itertools.count(1)


def attach(conn):
    """The pipe to the web process; set before anything publishes or uses the cache."""
    global _conn
    _conn = conn


def send(message):
    if _conn is None:
        raise RuntimeError("this process has no pipe to a web process (inference.parent_link.attach)")
    with _send_lock:
        _conn.send(message)


def call(request):
    """Ask the web process and wait for its answer (delivered by the child's reader, ``answered``)."""
    call_id = next(_call_ids)
    reply = _calls[call_id] = [threading.Event(), False, None]
    try:
        send(("call", call_id, request))
        if not reply[0].wait(CALL_TIMEOUT):
            raise TimeoutError(f"the web process did not answer {request[:2]} within {CALL_TIMEOUT} s")
    finally:
        _calls.pop(call_id, None)
    if not reply[1]:
        if isinstance(reply[2], BaseException):
            raise reply[2]  # e.g. incr's ValueError for a missing key, as a local cache raises it
        raise RuntimeError(f"the web process could not do {request[:2]}: {reply[2]}")
    return reply[2]


def answered(call_id, ok, value):
    reply = _calls.get(call_id)
    if reply is not None:
        reply[1], reply[2] = ok, value
        reply[0].set()


def fail_all_calls(reason):
    """The web process is gone: nobody waits out CALL_TIMEOUT for it."""
    for call_id in list(_calls):
        answered(call_id, False, reason)


class PipeChannelLayer(BaseChannelLayer):
    """Publishes only: the child never subscribes, so the other layer methods are not offered."""

    extensions = ["groups"]

    async def group_send(self, group, message):
        assert self.valid_group_name(group), "Invalid group name"
        # Blocking, but only for a pipe write: the web process reads it continuously.
        send(("group_send", group, message))

    async def send(self, channel, message):
        raise NotImplementedError("a device-worker child only publishes to groups")

    async def receive(self, channel):
        raise NotImplementedError("a device-worker child only publishes to groups")

    async def new_channel(self, prefix="specific."):
        raise NotImplementedError("a device-worker child only publishes to groups")

    async def group_add(self, group, channel):
        raise NotImplementedError("a device-worker child only publishes to groups")

    async def group_discard(self, group, channel):
        raise NotImplementedError("a device-worker child only publishes to groups")


class ParentCache(BaseCache):
    """The web process's cache, asked over the pipe; stop flags kept in this process. Sentinels
    (the default timeout, get's "missing" markers) do not survive pickling, so they never cross."""

    def __init__(self, location, params):
        super().__init__(params)
        self._local = LocMemCache(location or "smolsite-worker-child", {})

    @staticmethod
    def _is_local(key):
        return key.startswith(LOCAL_KEY_PREFIXES)

    @staticmethod
    def _remote(method, *args, timeout=DEFAULT_TIMEOUT, **kwargs):
        if timeout is not DEFAULT_TIMEOUT:
            kwargs["timeout"] = timeout
        return call(("cache", method, args, kwargs))

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        if self._is_local(key):
            return self._local.add(key, value, timeout, version)
        return self._remote("add", key, value, timeout=timeout, version=version)

    def get(self, key, default=None, version=None):
        if self._is_local(key):
            return self._local.get(key, default, version)
        found = self._remote("get_many", [key], version=version)
        return found[key] if key in found else default

    def get_many(self, keys, version=None):
        keys = list(keys)
        found = self._local.get_many([k for k in keys if self._is_local(k)], version)
        remote = [k for k in keys if not self._is_local(k)]
        if remote:
            found.update(self._remote("get_many", remote, version=version))
        return found

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        if self._is_local(key):
            return self._local.set(key, value, timeout, version)
        return self._remote("set", key, value, timeout=timeout, version=version)

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        if self._is_local(key):
            return self._local.touch(key, timeout, version)
        return self._remote("touch", key, timeout=timeout, version=version)

    def delete(self, key, version=None):
        if self._is_local(key):
            return self._local.delete(key, version)
        return self._remote("delete", key, version=version)

    def has_key(self, key, version=None):
        if self._is_local(key):
            return self._local.has_key(key, version)
        return self._remote("has_key", key, version=version)

    def incr(self, key, delta=1, version=None):
        if self._is_local(key):
            return self._local.incr(key, delta, version)
        return self._remote("incr", key, delta, version=version)

    def clear(self):
        self._local.clear()  # a child does not wipe the site's cache
