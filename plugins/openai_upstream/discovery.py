"""Model discovery and health probes, in the background of the process that runs the upstream
worker: every SMOLSITE_UPSTREAM_PROBE_SECONDS, ``GET <base_url>/models`` on every enabled upstream,
each on a thread of its own (a hung upstream delays nobody else's probe). What it finds goes to
the shared cache (catalog.py reads it); a probe that fails or times out opens that upstream's
breaker, one that answers closes it. Never on a page load or an API request."""
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections

from . import breaker, config
from .balance import get_balancer
from .client import UpstreamError, get_json

logger = logging.getLogger(__name__)

CATALOG_KEY = "smolsite:upstream:catalog"
CATALOG_TTL = 24 * 3600  # what an upstream served stays listed (as unavailable) while it is down
MAX_MODELS = 500
MAX_ID = 200


def probe_seconds():
    return float(getattr(settings, "SMOLSITE_UPSTREAM_PROBE_SECONDS", 5))


def probe_timeout():
    return float(getattr(settings, "SMOLSITE_UPSTREAM_PROBE_TIMEOUT", 3))


def read_catalog():
    return cache.get(CATALOG_KEY) or {}


def _clean_models(upstream, payload):
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise UpstreamError(f"{upstream.name}: /models did not answer an OpenAI model list")
    found = []
    for item in data[:MAX_MODELS]:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        model_id = item["id"]
        if not model_id or len(model_id) > MAX_ID or not model_id.isprintable():
            continue
        if upstream.models and model_id not in upstream.models:
            continue
        n_ctx = item.get("max_model_len") or item.get("context_length") or upstream.n_ctx
        if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx < 16:
            n_ctx = upstream.n_ctx
        found.append({"id": model_id, "n_ctx": min(n_ctx, upstream.n_ctx) if upstream.n_ctx else n_ctx})
    return found


def probe(upstream):
    """One probe; returns the upstream's models, or raises UpstreamError (and trips its breaker)."""
    try:
        payload = get_json(upstream, "/models", timeout=min(probe_timeout(), upstream.read_timeout))
        models = _clean_models(upstream, payload)
    except UpstreamError as exc:
        # An engine that answers /models only between answers (llama-cpp-python's server) is not hung
        # while it streams to us: its streams have read_timeout, the same patience, to prove it.
        if exc.timeout and get_balancer().in_flight(upstream.name) and \
                breaker.streamed_within(upstream.name, upstream.read_timeout):
            raise UpstreamError(f"{exc} (not counted: it is streaming answers)", counts=False) from None
        breaker.trip(upstream.name, str(exc))
        raise
    breaker.success(upstream.name, probe=True)
    return models


class Discovery:
    """The probe loop of one process; ``upstreams()`` is the configuration it read last."""

    def __init__(self):
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="smolsite-upstream-probe")
        self._running = set()  # upstream names whose probe has not returned yet
        self._lock = threading.Lock()
        self._upstreams = {}
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self._run, name="smolsite-upstream-discovery", daemon=True)
        self.thread.start()
        return self

    def upstreams(self):
        with self._lock:
            return dict(self._upstreams)

    def refresh(self):
        """Probe now (an admin saved an upstream)."""
        self._wake.set()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.cycle()
            except Exception:
                logger.exception("upstream discovery failed; trying again next period")
            finally:
                close_old_connections()
            self._wake.wait(probe_seconds())
            self._wake.clear()

    def cycle(self, wait=False):
        upstreams = config.all_upstreams()
        sync_env_rows([u for u in upstreams if u.source == "env"])
        with self._lock:
            self._upstreams = {u.name: u for u in upstreams}
        futures = []
        for upstream in upstreams:
            if not upstream.enabled:
                continue
            with self._lock:
                if upstream.name in self._running:
                    continue  # its last probe still waits on it: its timeout will trip the breaker
                self._running.add(upstream.name)
            try:
                futures.append(self._pool.submit(self._probe_one, upstream))
            except RuntimeError:  # the interpreter is shutting down
                self._stop.set()
                return
        self._forget_removed({u.name for u in upstreams if u.enabled})
        if wait:
            for f in futures:
                f.result()

    def _probe_one(self, upstream):
        try:
            models = probe(upstream)
        except UpstreamError as exc:
            logger.warning("upstream %s: probe failed: %s", upstream.name, exc)
            return
        except Exception:
            logger.exception("upstream %s: probe failed", upstream.name)
            breaker.trip(upstream.name, "the probe failed")
            return
        finally:
            with self._lock:
                self._running.discard(upstream.name)
        _store(upstream, models)

    def _forget_removed(self, names):
        catalog = read_catalog()
        entries = catalog.get("upstreams", {})
        if set(entries) - names:
            catalog["upstreams"] = {n: e for n, e in entries.items() if n in names}
            cache.set(CATALOG_KEY, catalog, CATALOG_TTL)

    def stop(self):
        self._stop.set()
        self._wake.set()


_catalog_lock = threading.Lock()


def _store(upstream, models):
    entry = {"models": models, "at": time.time(), "n_ctx": upstream.n_ctx, "prefix": upstream.prefix}
    with _catalog_lock:  # one writer process (the upstream worker); its probes finish in any order
        catalog = read_catalog()
        catalog.setdefault("upstreams", {})[upstream.name] = entry
        cache.set(CATALOG_KEY, catalog, CATALOG_TTL)


def sync_env_rows(env_upstreams):
    """SMOLSITE_UPSTREAMS shown in the admin as read-only rows (never with their key)."""
    from django.db import DatabaseError, IntegrityError

    from .models import UpstreamServer

    try:
        names = set()
        for u in env_upstreams:
            names.add(u.name)
            fields = {"base_url": u.base_url, "models": "\n".join(u.models), "prefix": u.prefix,
                      "max_concurrency": u.max_concurrency, "connect_timeout": u.connect_timeout,
                      "read_timeout": u.read_timeout, "n_ctx": u.n_ctx, "tokenizer": u.tokenizer,
                      "structured_output": u.structured_output, "tools": u.tools, "enabled": u.enabled}
            row = UpstreamServer.objects.filter(name=u.name).first()
            if row is None:
                UpstreamServer.objects.create(name=u.name, from_env=True, api_key="", **fields)
            elif row.from_env and any(getattr(row, k) != v for k, v in fields.items()):
                UpstreamServer.objects.filter(pk=row.pk).update(**fields)
        UpstreamServer.objects.filter(from_env=True).exclude(name__in=names).delete()
    except (DatabaseError, IntegrityError) as exc:  # not migrated, or busy: next period
        logger.info("upstream rows not synced: %s", exc)


_discovery = None
_discovery_lock = threading.Lock()


def get_discovery(start=True):
    global _discovery
    with _discovery_lock:
        if _discovery is None and start:
            _discovery = Discovery().start()
        return _discovery


def current_upstreams():
    """The configuration as this process's probe loop read it last, or (no loop here) as configured now."""
    d = get_discovery(start=False)
    found = d.upstreams() if d is not None else {}
    return found or {u.name: u for u in config.all_upstreams()}
