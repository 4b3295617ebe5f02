"""The configured models (settings.SMOLSITE_MODELS): name -> path, context size, threads, device."""
import logging
import threading
from dataclasses import dataclass, field

from django.conf import settings

from .gguf_info import GGUFError, read_gguf_info

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    path: str
    n_ctx: int = 8192
    threads: int = 2
    device: str = "cpu"
    backend: str = ""
    options: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def queue(self):
        return f"device.{self.device}"


class UnknownModel(LookupError):
    pass


_KNOWN = {"path", "n_ctx", "threads", "device", "backend"}


def all_models():
    """SMOLSITE_MODELS, then the models plugins serve (hook ``register_models``)."""
    return _configured() + _from_plugins()


def _from_plugins():
    from .plugins import get_plugin_manager

    taken, found = set(settings.SMOLSITE_MODELS), []
    try:
        results = get_plugin_manager().hook.register_models()
    except Exception:  # a plugin's failure never hides the configured models
        logger.exception("a plugin's register_models failed")
        return []
    for models in results:
        for model in models or []:
            if model.name not in taken:
                taken.add(model.name)
                found.append(model)
    return found


def _configured():
    return [
        ModelConfig(
            name=name,
            path=conf.get("path", ""),
            n_ctx=int(conf.get("n_ctx", 8192)),
            threads=int(conf.get("threads", 2)),
            device=conf.get("device", "cpu"),
            backend=conf.get("backend", ""),
            options={k: v for k, v in conf.items() if k not in _KNOWN},
        )
        for name, conf in settings.SMOLSITE_MODELS.items()
    ]


def get_model(name=None):
    name = name or settings.SMOLSITE_DEFAULT_MODEL
    for model in all_models():
        if model.name == name:
            return model
    raise UnknownModel(f"unknown model {name!r}; configured: {', '.join(m.name for m in all_models())}")


def models_for_device(device):
    return [m for m in all_models() if m.device == device]


_info_cache = {}
_info_lock = threading.Lock()


def model_info(model):
    """GGUF header facts for a model, cached per (path, mtime); None when unreadable or not GGUF."""
    import os

    try:
        key = (model.path, os.path.getmtime(model.path))
    except OSError:
        return None
    with _info_lock:
        if key not in _info_cache:
            try:
                _info_cache[key] = read_gguf_info(model.path)
            except GGUFError:
                _info_cache[key] = None
        return _info_cache[key]


def model_features(model):
    from .plugins import get_plugin_manager

    info = model_info(model)
    features = set()
    for result in get_plugin_manager().hook.model_features(model=model, info=info):
        features.update(result or [])
    return sorted(features)
