"""Adds a "hello" feature to every model and prefixes the system prompt, so tests can see it ran."""
import pluggy

# Hooks need nothing of smolsite: a marker of the project "smolsite" is what
# inference.plugin_api.hookimpl is, so a plugin with no backend or tool can do without it.
hookimpl = pluggy.HookimplMarker("smolsite")


@hookimpl
def model_features(model, info):
    return ["hello"]


@hookimpl
def prepare_request(request, model, info):
    request.system_prompt = ("Say hello. " + request.system_prompt).strip()
