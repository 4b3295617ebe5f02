"""Which device workers are alive and what they hold: heartbeats in Django's cache."""
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from django.core.cache import cache

from . import erasure

HEARTBEAT_SECONDS = 5
TTL = 20
INDEX_KEY = "smolsite:workers"


def _key(worker_id):
    return f"smolsite:worker:{worker_id}"


def make_worker_id(device):
    return f"{device}@{socket.gethostname()}:{os.getpid()}"


def beat(worker_id, device, models, extra=None):
    """``extra``: what routing needs to know (the worker's own queue, how loaded it is)."""
    cache.set(_key(worker_id), {**(extra or {}), "id": worker_id, "device": device, "models": list(models),
                                "at": time.time()}, TTL)
    index = set(cache.get(INDEX_KEY) or [])
    if worker_id not in index:
        index.add(worker_id)
        cache.set(INDEX_KEY, sorted(index), None)


def forget(worker_id):
    cache.delete(_key(worker_id))
    # Each restarted worker process has a new id: without this the index only ever grows. A live
    # worker removed by a racing update adds itself back at its next beat.
    index = cache.get(INDEX_KEY) or []
    if worker_id in index:
        cache.set(INDEX_KEY, [w for w in index if w != worker_id], None)


def alive_workers():
    index = cache.get(INDEX_KEY) or []
    found = cache.get_many([_key(w) for w in index])
    return [found[_key(w)] for w in index if _key(w) in found]


def is_alive(worker_id):
    return cache.get(_key(worker_id)) is not None


class Heartbeat:
    """Beats from a daemon thread while the worker lives."""

    def __init__(self, worker_id, device, models_fn, extra_fn=None, interval=HEARTBEAT_SECONDS):
        self.worker_id, self.device, self.models_fn = worker_id, device, models_fn
        self.extra_fn = extra_fn or dict
        self.interval = min(interval or HEARTBEAT_SECONDS, HEARTBEAT_SECONDS)
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        beat(self.worker_id, self.device, self.models_fn(), self.extra_fn())
        self._thread = threading.Thread(target=self._run, name="smolsite-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                beat(self.worker_id, self.device, self.models_fn(), self.extra_fn())
            except Exception:  # the cache may be briefly unreachable; try again next beat
                pass

    def stop(self):
        self._stop.set()
        forget(self.worker_id)


def _engine_key(worker_id):
    return f"smolsite:engine:{worker_id}"


def engine_stats():
    """worker id -> {model -> engine figures}, for workers alive now (read by /metrics)."""
    alive = [w["id"] for w in alive_workers()]
    found = cache.get_many([_engine_key(w) for w in alive])
    return {w: found[_engine_key(w)] for w in alive if _engine_key(w) in found}


class EngineReporter:
    """Where a device's models run (a Celery worker, the embedded child), their engines' running and
    waiting sequences, batch fill and cache hits reach the shared cache every few seconds."""

    def __init__(self, worker_id, stats_fn, forget_fn=None):
        self.worker_id, self.stats_fn = worker_id, stats_fn
        self.forget_fn = forget_fn  # drops deleted users' cached state (inference.erasure)
        self.forgotten = set()
        self._stop = threading.Event()

    def start(self):
        threading.Thread(target=self._run, name="smolsite-engine-stats", daemon=True).start()
        return self

    def _run(self):
        while True:
            try:
                cache.set(_engine_key(self.worker_id), self.stats_fn(), TTL)
                if self.forget_fn is not None:
                    erasure.apply_pending(self.forget_fn, self.forgotten)
            except Exception:  # the cache may be briefly unreachable; try again next time
                pass
            if self._stop.wait(HEARTBEAT_SECONDS):
                break

    def stop(self):
        self._stop.set()


@dataclass
class PluginDevice:
    """A device whose worker a plugin describes (hook ``register_devices``): ``serving()`` names
    the models it can answer now (its heartbeat), ``start()`` runs once where the worker runs,
    ``details()`` adds facts to the heartbeat, ``threads`` jobs run at once (0: the site's default),
    ``beat_seconds`` how often the heartbeat says what it serves (at most HEARTBEAT_SECONDS)."""

    name: str
    serving: Callable[[], list]
    start: Optional[Callable[[], object]] = None
    details: Optional[Callable[[], dict]] = None
    threads: int = 0
    beat_seconds: float = 0  # heartbeat more often than every HEARTBEAT_SECONDS (availability changes)


def plugin_devices():
    """name -> PluginDevice, from every plugin (the first to name a device wins)."""
    from .plugins import get_plugin_manager

    found = {}
    for specs in get_plugin_manager().hook.register_devices():
        for spec in specs or []:
            found.setdefault(spec.name, spec)
    return found
