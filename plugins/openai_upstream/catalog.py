"""The upstream models as smolsite's models: read from what discovery left in the shared cache and
the breakers' states, memoised for a second per process (all_models() is called often). One model
name served by several upstreams is one model here, its load shared (balance.py); a name that a
model of SMOLSITE_MODELS already has is namespaced as "<upstream>/<id>"."""
import threading
import time

from django.conf import settings

from inference.plugin_api import ModelConfig

from . import breaker
from .discovery import read_catalog

DEVICE = "upstream"
BACKEND = "openai_upstream"
MEMO_SECONDS = 1.0

_memo = {"at": 0.0, "models": [], "down": set()}
_lock = threading.Lock()


def _build():
    catalog = read_catalog().get("upstreams", {})
    local = set(getattr(settings, "SMOLSITE_MODELS", {}))
    routes, n_ctx = {}, {}
    for upstream, entry in sorted(catalog.items()):
        for model in entry.get("models", []):
            name = (entry.get("prefix") or "") + model["id"]
            if name in local:
                name = f"{upstream}/{name}"
            routes.setdefault(name, []).append((upstream, model["id"]))
            n_ctx[name] = min(n_ctx.get(name, model["n_ctx"]), model["n_ctx"])
    states = breaker.states(list(catalog))
    models, down = [], set()
    for name in sorted(routes):
        served_by = [u for u, _ in routes[name]]
        up = [u for u in served_by if not states[u]["open"]]
        if not up:
            down.add(name)
        label = "on " + ", ".join(served_by) + ("" if up else ": unavailable")
        models.append(ModelConfig(name=name, path="", n_ctx=n_ctx[name], threads=0, device=DEVICE, backend=BACKEND,
                                  options={"routes": routes[name], "served_by": served_by, "up": up,
                                           "label": label}))
    return models, down


def _current():
    now = time.monotonic()
    with _lock:
        if now - _memo["at"] < MEMO_SECONDS:
            return _memo["models"], _memo["down"]
    models, down = _build()
    with _lock:
        _memo.update(at=time.monotonic(), models=models, down=down)
    return models, down


def models():
    return list(_current()[0])


def serving():
    """Names of the models some healthy upstream serves now (the upstream worker's heartbeat)."""
    found, down = _build()  # fresh: the heartbeat is what pages and /v1 trust for availability
    return [m.name for m in found if m.name not in down]


def details():
    """Heartbeat facts for /readyz (staff): each upstream's state, error and models, and the models
    no healthy upstream serves now, with why."""
    catalog = read_catalog().get("upstreams", {})
    states = breaker.states(list(catalog))
    found, down = _build()
    unavailable = {}
    for model in found:
        if model.name in down:
            reasons = [f"{u}: {states[u]['error'] or 'circuit open'}" for u in model.options["served_by"]]
            unavailable[model.name] = "; ".join(reasons)
    return {"upstreams": [{"name": name, "up": not states[name]["open"], "error": states[name]["error"],
                           "models": [m["id"] for m in entry.get("models", [])]}
                          for name, entry in sorted(catalog.items())],
            "unavailable": unavailable}


def forget_memo():
    with _lock:
        _memo["at"] = 0.0
