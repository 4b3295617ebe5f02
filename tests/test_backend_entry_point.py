"""A backend from a pip-installed distribution, chosen by name: ``"backend": "hello-shout"`` in
SMOLSITE_MODELS runs the backend that tests/plugin_dist/smolsite-hello registers through its
``hello_backend`` entry point (installed by ``make install-test``)."""
import pytest

from inference.backends import BackendError
from inference.model_configs import get_model
from inference.plugins import build_plugin_manager, get_plugins
from inference.registry import ModelRegistry
from inference.testing import make_request, run_request

pytestmark = pytest.mark.nodb


@pytest.fixture
def shouter(settings):
    settings.SMOLSITE_MODELS = {**settings.SMOLSITE_MODELS,
                                "shouter": {"path": "", "backend": "hello-shout", "n_ctx": 512}}
    return get_model("shouter")


def test_a_backend_plugin_is_chosen_by_name_through_its_installed_entry_point(plugin_manager_reset, shouter):
    pm = build_plugin_manager(blocked=[], extra_distributions=["smolsite-hello"])
    plugin_manager_reset.reset(pm)
    listed = {p["name"]: p for p in get_plugins(pm)}
    assert "hello_backend" in listed, "smolsite-hello 0.3.0 is not installed: run `make install-test`"
    assert listed["hello_backend"]["distribution"] == "smolsite-hello"
    assert listed["hello_backend"]["hooks"] == ["register_backends"]
    assert shouter.backend == "hello-shout"
    registry = ModelRegistry()
    registry.load([shouter])
    assert type(registry.backend("shouter")).__module__ == "smolsite_hello.shouting"
    result, events = run_request(registry, make_request("shouter", "ahoy there", max_tokens=10))
    assert result.status == "done" and result.backend == "hello-shout"
    assert result.text == "HELLO! AHOY THERE"
    assert "".join(e["text"] for e in events if e["kind"] == "text") == result.text


def test_without_the_distribution_the_model_names_the_missing_backend(plugin_manager_reset, shouter):
    plugin_manager_reset.reset(build_plugin_manager(blocked=[]))  # under test: our own plugins only
    with pytest.raises(BackendError, match="asks for backend 'hello-shout', which no plugin registers"):
        ModelRegistry().load([shouter])
