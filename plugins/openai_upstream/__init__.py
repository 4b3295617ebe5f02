"""Models served by other engines (vLLM, SGLang, llama.cpp's server, Ollama, another smolsite): any
server that speaks the OpenAI API, configured by an admin (Django admin, or SMOLSITE_UPSTREAMS).

Built only on smolsite's hooks, as a third party would write it:

* ``register_devices``: the device "upstream" and its worker, a thread pool in the web process
  (embedded) or a Celery worker of its own (``make worker DEVICE=upstream``), whose threads only
  wait on sockets, with the probe loop (discovery.py) in its background;
* ``register_models``: the models discovery found (catalog.py);
* ``register_backends``: the backend that streams from the chosen upstream (backend.py);
* ``register_stream_filters``: upstream ``reasoning_content`` into the Thinking panel (reasoning.py).

Nothing of its own is imported at module level, only smolsite's public plugin API (which needs no
models): this package is also a Django app (its admin model), imported before Django's apps are
ready, and its own modules read models.
"""
from inference.plugin_api import PluginDevice, hookimpl

DEVICE = "upstream"


@hookimpl
def register_backends(register):
    from .backend import UpstreamBackend

    register("openai_upstream", UpstreamBackend)


@hookimpl
def register_models():
    from . import catalog

    return catalog.models()


@hookimpl
def register_devices():
    from django.conf import settings

    from . import catalog, discovery

    threads = int(getattr(settings, "SMOLSITE_UPSTREAM_THREADS", 64))
    # The heartbeat says which models can answer as often as the probes learn it.
    return [PluginDevice(DEVICE, serving=catalog.serving, start=lambda: discovery.get_discovery(),
                         details=catalog.details, threads=threads, beat_seconds=discovery.probe_seconds())]


@hookimpl
def register_stream_filters(request, model, info):
    if model.backend != "openai_upstream":
        return None
    from .reasoning import ReasoningMarks

    return ReasoningMarks()
