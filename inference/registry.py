"""The registry of models this process holds: one backend instance per model, loaded once per
process (the batching itself happens inside a backend: plugins/llama_cpp/engine.py)."""
import atexit
import logging
import threading

from .backends import BackendError
from .model_configs import all_models, get_model, models_for_device
from .plugins import get_plugin_manager

logger = logging.getLogger(__name__)


def registered_backends():
    backends = {}

    def register(name, backend_class):
        backends[name] = backend_class

    get_plugin_manager().hook.register_backends(register=register)
    return backends


def create_backend(model):
    backends = registered_backends()
    name = model.backend or get_plugin_manager().hook.choose_backend(model=model, backends=backends)
    if not name:
        raise BackendError(f"no backend plugin can run model {model.name!r} ({model.path})")
    if name not in backends:
        raise BackendError(f"model {model.name!r} asks for backend {name!r}, which no plugin registers "
                           f"(registered: {', '.join(sorted(backends)) or 'none'})")
    return backends[name](model)


class ModelRegistry:
    def __init__(self):
        self._backends = {}
        self._failures = {}  # model name -> why it could not load, told to every job for it
        self._lock = threading.Lock()

    def load(self, models, keep_going=False):
        """Load each model once; raise on the first that cannot load (fail loudly at start),
        or with ``keep_going`` load the rest first and raise the first failure at the end."""
        errors = []
        for model in models:
            with self._lock:
                if model.name in self._backends:
                    continue
            try:
                backend = create_backend(model)
                logger.info("loading model %s with backend %s from %s", model.name, backend.name, model.path)
                backend.load()
            except Exception as exc:
                with self._lock:
                    self._failures[model.name] = str(exc)
                if not keep_going:
                    raise
                errors.append(exc)
                continue
            with self._lock:
                self._backends[model.name] = backend
                self._failures.pop(model.name, None)
        if errors:
            raise errors[0]

    def load_device(self, device, keep_going=False):
        models = models_for_device(device)
        if not models:
            raise BackendError(f"no models are configured for device {device!r}")
        self.load(models, keep_going=keep_going)

    def _on_demand(self, model_name, backend):
        """A backend whose class loads on demand (models a plugin finds at run time): made at the
        model's first request, and made again when the model's options changed."""
        if backend is not None and not getattr(backend, "load_on_demand", False):
            return backend
        model = next((m for m in all_models() if m.name == model_name), None)
        if model is None:
            return backend
        if backend is not None:
            if backend.model.options == model.options and backend.model.n_ctx == model.n_ctx:
                return backend
        elif not getattr(registered_backends().get(model.backend), "load_on_demand", False):
            return None
        fresh = create_backend(model)
        fresh.load()
        with self._lock:
            self._backends[model_name] = fresh
            self._failures.pop(model_name, None)
        return fresh

    def backend(self, model_name):
        with self._lock:
            backend = self._backends.get(model_name)
            failure = self._failures.get(model_name)
        if backend is None or getattr(backend, "load_on_demand", False):
            backend = self._on_demand(model_name, backend)
        if backend is None and failure:
            raise BackendError(f"model {model_name!r} could not be loaded: {failure}")
        if backend is None:
            known = {m.name for m in all_models()}
            if model_name not in known:
                raise BackendError(f"unknown model {model_name!r}")
            raise BackendError(f"model {model_name!r} is not loaded on this worker "
                               f"(device {get_model(model_name).device})")
        return backend

    def occupancy(self):
        """Sequences running and waiting over every batching backend held here."""
        totals = {"running": 0, "waiting": 0, "slots": 0}
        with self._lock:
            backends = list(self._backends.values())
        for backend in backends:
            stats = backend.stats() if hasattr(backend, "stats") else {}
            for key in totals:
                totals[key] += stats.get(key, 0)
        return totals

    def stats(self):
        """Per model: the backend's engine figures (for /metrics and the heartbeat)."""
        with self._lock:
            backends = dict(self._backends)
        return {name: b.stats() for name, b in backends.items() if hasattr(b, "stats")}

    def forget_users(self, user_keys):
        with self._lock:
            backends = list(self._backends.values())
        for backend in backends:
            backend.forget_users(user_keys)

    def loaded_models(self):
        """What this worker's heartbeat says it serves; backends loaded on demand are a plugin
        device's, whose own heartbeat says which of its models can answer now."""
        with self._lock:
            return sorted(name for name, b in self._backends.items() if not getattr(b, "load_on_demand", False))

    def unload_all(self):
        with self._lock:
            backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            backend.close()


_registry = ModelRegistry()
# Free models before the interpreter tears down the modules llama-cpp-python's destructor needs.
atexit.register(_registry.unload_all)


def get_registry():
    return _registry
