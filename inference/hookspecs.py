"""The hooks a smolsite plugin can implement. Every hook is documented in docs/plugins.md.

Hooks run once per request or per process, never once per token: per-token work belongs in the
stream filter object a plugin returns from ``register_stream_filters``.
"""
from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("smolsite")
hookimpl = HookimplMarker("smolsite")


@hookspec
def register_backends(register):
    """Register backend classes: call ``register(name, backend_class)`` for each.

    A backend class is constructed with a ``ModelConfig`` and must implement ``Backend``, both
    from ``inference.plugin_api`` (the one module plugins import from inference).
    """


@hookspec(firstresult=True)
def choose_backend(model, backends):
    """Return the name of the backend to run ``model`` (a ``ModelConfig``), or None to pass.

    ``backends`` maps registered backend names to classes.
    """


@hookspec
def model_features(model, info):
    """Return a list of feature names (e.g. ``"thinking"``) that ``model`` supports.

    ``info`` is the model's ``GGUFInfo`` (metadata read from the file header) or None.
    """


@hookspec
def prepare_request(request, model, info):
    """Adjust a ``GenerationRequest`` before its prompt is rendered: system prompt,
    chat-template keyword arguments (``request.template_kwargs``), sampling parameters.
    """


@hookspec
def register_stream_filters(request, model, info):
    """Return a stream filter for this request, or None.

    A stream filter has ``feed(text) -> list[(kind, text)]`` and ``finish() -> list[(kind, text)]``;
    kinds are ``"text"`` and ``"reasoning"``. Filters are chained in registration order.
    """


@hookspec
def generation_started(request):
    """Observe the start of a generation (called in the worker, once per request)."""


@hookspec
def generation_finished(request, result):
    """Observe the end of a generation; ``result`` is a ``GenerationResult`` with status,
    token usage and timings. Called once per request, whatever the outcome."""


@hookspec
def request_throttled(action, scope):
    """Observe a request a limit refused: ``action`` is "login", "admin_login", "signup" or
    "delete_account" (its password check), ``scope`` "account" or "address" (which limit). Called
    in the web process, once per refused request."""


@hookspec
def register_routes():
    """Return a list of Django URL patterns to mount at the site root (e.g. ``/metrics``)."""


@hookspec
def register_tools():
    """Return a list of ``inference.plugin_api.Tool`` the chat may offer the model: a name,
    a description, a JSON Schema for the arguments and ``fn(arguments, context)``, run by the
    server on a thread of its own, with a time limit, as the chat's owner (``context.user_id``).
    A tool with a bad name or schema, or a name another plugin took first, is skipped with a
    logged warning."""


@hookspec
def register_models():
    """Return a list of ``inference.plugin_api.ModelConfig`` served besides SMOLSITE_MODELS (models found
    at run time, e.g. on upstream servers). Called by every ``all_models()``: read a cache, never the
    network. Names already taken are ignored. A backend class with ``load_on_demand = True`` is made
    at its model's first request (and again when the model's options change)."""


@hookspec
def register_devices():
    """Return a list of ``inference.plugin_api.PluginDevice``: devices whose worker a plugin describes
    (its models now served, background work to start, heartbeat details, threads). Embedded, such a
    worker is a thread pool of the web process (I/O only); scaled out, ``make worker DEVICE=<name>``."""
