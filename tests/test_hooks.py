"""One test per hook (test_plugins.py checks that each hook has its test_hook_<name> here).
Each registers a small plugin object on a fresh plugin manager and runs the real code path."""
import pytest

from inference.backends import Backend, Delta, Finish
from inference.registry import ModelRegistry, create_backend, registered_backends
from inference.hookspecs import hookimpl
from inference.model_configs import ModelConfig, model_features
from inference.plugins import build_plugin_manager
from inference.testing import make_request, run_request

ECHO = ModelConfig(name="echo", path="", backend="echo", n_ctx=512)


@pytest.fixture
def pm(plugin_manager_reset):
    manager = build_plugin_manager(blocked=[])
    plugin_manager_reset.reset(manager)
    return manager


@pytest.fixture
def echo_engine(pm, settings):
    settings.SMOLSITE_MODELS = {**settings.SMOLSITE_MODELS, "echo": {"path": "", "backend": "echo", "n_ctx": 512}}
    registry = ModelRegistry()
    registry.load([ECHO])
    return registry


class ReverseBackend(Backend):
    name = "reverse"

    def load(self):
        self.loaded = True

    context_size = 256

    def render_prompt(self, request):
        return request.messages[-1]["content"]

    def count_tokens(self, text):
        return len(text)

    def submit(self, request, prompt, should_stop):
        for ch in prompt[::-1]:
            yield Delta(ch)
        yield Finish("stop", len(prompt), len(prompt))


def test_hook_register_backends(pm):
    class Plugin:
        @hookimpl
        def register_backends(self, register):
            register("reverse", ReverseBackend)

    pm.register(Plugin(), name="reverse-plugin")
    backends = registered_backends()
    assert backends["reverse"] is ReverseBackend
    assert {"llama_cpp", "echo"} <= set(backends)
    registry = ModelRegistry()
    registry.load([ModelConfig(name="rev", path="", backend="reverse")])
    result, events = run_request(registry, make_request("rev", "abc"))
    assert result.text == "cba" and result.status == "done"


def test_hook_choose_backend(pm):
    assert create_backend(ModelConfig(name="m", path="/x/model.gguf")).name == "llama_cpp"
    with pytest.raises(Exception, match="no backend plugin can run"):
        create_backend(ModelConfig(name="m", path="/x/model.onnx"))

    class Plugin:
        @hookimpl
        def register_backends(self, register):
            register("reverse", ReverseBackend)

        @hookimpl
        def choose_backend(self, model, backends):
            return "reverse" if model.path.endswith(".rev") else None

    pm.register(Plugin())
    assert create_backend(ModelConfig(name="m", path="/x/model.rev")).name == "reverse"
    assert create_backend(ModelConfig(name="m", path="/x/model.gguf")).name == "llama_cpp"


def test_hook_model_features(pm):
    class Plugin:
        @hookimpl
        def model_features(self, model, info):
            return ["vision"] if model.name == "eyes" else []

    pm.register(Plugin())
    assert "vision" in model_features(ModelConfig(name="eyes", path=""))
    assert "vision" not in model_features(ModelConfig(name="other", path=""))


def test_hook_prepare_request(echo_engine, pm):
    seen = {}

    class Plugin:
        @hookimpl
        def prepare_request(self, request, model, info):
            request.system_prompt = "Be brief."
            request.params.max_tokens = 2
            seen["model"] = model.name

    pm.register(Plugin())
    request = make_request("echo", "one two three four")
    result, _ = run_request(echo_engine, request)
    assert seen["model"] == "echo"
    assert result.text == "one two" and result.finish_reason == "length"
    assert echo_engine.backend("echo").render_prompt(request).startswith("system: Be brief.")


def test_hook_register_stream_filters(echo_engine, pm):
    class Shout:
        def __init__(self):
            self.held = ""

        def feed(self, text):
            # Holds the last character back until finish() to prove nothing is lost.
            out, self.held = self.held + text[:-1], text[-1:]
            return [("text", out.upper())] if out else []

        def finish(self):
            return [("reasoning", self.held)]

    class Plugin:
        @hookimpl
        def register_stream_filters(self, request, model, info):
            return Shout()

    pm.register(Plugin())
    result, events = run_request(echo_engine, make_request("echo", "quiet words here"))
    assert result.text == "QUIET WORDS HER"
    assert result.reasoning == "e"
    assert "".join(e["text"] for e in events if e["kind"] == "text") == "QUIET WORDS HER"


def test_hook_generation_started(echo_engine, pm):
    started = []

    class Plugin:
        @hookimpl
        def generation_started(self, request):
            started.append(request.id)

    pm.register(Plugin())
    run_request(echo_engine, make_request("echo", "hi", request_id="r-7"))
    assert started == ["r-7"]


def test_hook_generation_finished(echo_engine, pm):
    finished = []

    class Plugin:
        @hookimpl
        def generation_finished(self, request, result):
            finished.append((request.id, result.status, result.completion_tokens, result.error))

    pm.register(Plugin())
    run_request(echo_engine, make_request("echo", "a b c", request_id="ok"))
    run_request(echo_engine, make_request("missing-model", "a b c", request_id="bad"))
    assert finished[0] == ("ok", "done", 3, "")
    assert finished[1][0:2] == ("bad", "error") and "unknown model" in finished[1][3]


@pytest.mark.django_db
def test_hook_request_throttled(pm, settings):
    from django.contrib.auth import get_user_model
    from django.test import Client

    throttled = []

    class Plugin:
        @hookimpl
        def request_throttled(self, action, scope):
            throttled.append((action, scope))

    pm.register(Plugin())
    settings.SMOLSITE_LOGIN_FAILURES_PER_ACCOUNT = 2  # from one address: one failure
    get_user_model().objects.create_user("ann", password="right-horse-battery-7")
    for password in ("wrong", "right-horse-battery-7"):
        Client().post("/accounts/login/", {"username": "ann", "password": password})
    assert throttled == [("login", "account")]


@pytest.mark.django_db
def test_hook_register_routes(echo_engine, admin_client):
    # The metrics plugin mounts /metrics through this hook and counts through the observers.
    from test_metrics import parse, total

    labels = {"model": "echo", "source": "other"}  # "m1" is not a chat message
    before, _ = parse(admin_client.get("/metrics").content.decode())
    run_request(echo_engine, make_request("echo", "count these four", request_id="m1"))
    after, _ = parse(admin_client.get("/metrics").content.decode())
    grew = {name: total(after, name, **labels) - total(before, name, **labels) for name in (
        "smolsite_generations_total", "smolsite_completion_tokens_total")}
    assert grew == {"smolsite_generations_total": 1, "smolsite_completion_tokens_total": 3}
    assert total(after, "smolsite_generations_finished_total", status="done", **labels) \
        - total(before, "smolsite_generations_finished_total", status="done", **labels) == 1
    assert admin_client.get("/metrics.json").json()["completion_tokens"] == total(after, "smolsite_completion_tokens_total")


def test_hook_register_tools(pm):
    from inference.tool_runner import Tool, ToolContext, registered_tools, run_tool

    class Plugin:
        @hookimpl
        def register_tools(self):
            parameters = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
            return [Tool("shout", "Upper-case a text.", parameters, lambda arguments, context: arguments["text"].upper())]

    pm.register(Plugin(), name="shout-plugin")
    assert {"shout", "calculator"} <= set(registered_tools())
    outcome = run_tool("shout", '{"text": "hi"}', ToolContext(user_id=1))
    assert (outcome.status, outcome.output) == ("ok", "HI")


class OnDemandBackend(ReverseBackend):
    name = "on-demand"
    load_on_demand = True


def test_hook_register_models(pm, settings):
    found = ModelConfig(name="found-later", path="", backend="on-demand", device="elsewhere", n_ctx=64,
                        options={"where": "a"})
    clash = ModelConfig(name="echo", path="", backend="on-demand")  # a configured name: ignored

    class Plugin:
        @hookimpl
        def register_backends(self, register):
            register("on-demand", OnDemandBackend)

        @hookimpl
        def register_models(self):
            return [found, clash]

    settings.SMOLSITE_MODELS = {"echo": {"path": "", "backend": "echo"}}
    pm.register(Plugin(), name="models-plugin")
    from inference.model_configs import all_models, get_model

    assert [m.name for m in all_models()] == ["echo", "found-later"]
    assert get_model("echo").backend == "echo" and get_model("found-later").device == "elsewhere"
    # Loaded on demand at its first request, not in what the worker's heartbeat says it holds.
    registry = ModelRegistry()
    backend = registry.backend("found-later")
    assert isinstance(backend, OnDemandBackend) and registry.loaded_models() == []
    assert run_request(registry, make_request("found-later", "abc"))[0].text == "cba"
    assert registry.backend("found-later") is backend


def test_hook_register_devices(pm):
    from inference import embedded
    from inference.workers import PluginDevice, alive_workers, plugin_devices

    started = []

    class Plugin:
        @hookimpl
        def register_devices(self):
            return [PluginDevice("remote-test", serving=lambda: ["found-later"], start=lambda: started.append(1),
                                 details=lambda: {"unavailable": {"other": "down"}}, threads=2)]

    pm.register(Plugin(), name="devices-plugin")
    assert plugin_devices()["remote-test"].threads == 2
    worker = embedded.get_worker("remote-test")
    try:
        assert worker.ready.wait(10) and started == [1]
        beat = next(w for w in alive_workers() if w["id"] == worker.worker_id)
        assert beat["models"] == ["found-later"] and beat["unavailable"] == {"other": "down"}
    finally:
        worker.stop()
        with embedded._lock:
            embedded._workers.pop("remote-test", None)
