"""smolsite's public face for plugin authors: everything a backend, tool, stream-filter, device or
metrics plugin needs from ``inference``, in one module.

Plugins (the built-in ones in plugins/ and third parties alike) import inference only from here,
so inference's own modules may move and split without breaking them; the import-linter contract
``plugins-public-api`` (pyproject.toml) holds the built-in plugins to it. What a plugin needs that
is not here is added here, never imported from inside inference. Every hook is documented in
docs/plugins.md.
"""
from . import toolcalls
from .backends import (
    Backend,
    BackendError,
    Delta,
    Finish,
    GenerationRequest,
    PromptTooLong,
    Queued,
    SamplingParams,
)
from .gguf_info import GGUFError, GGUFInfo, read_gguf_info
from .health import ANONYMOUS, FORBIDDEN, GRANTED, INVALID_TOKEN, probe_access
from .hookspecs import hookimpl
from .model_configs import ModelConfig, UnknownModel, all_models, get_model
from .prompt import ChatTemplate
from .service import GenerationResult
from .tags import partial_tag
from .tool_runner import Outcome, Tool, ToolContext
from .worker_state import current_worker_id
from .workers import PluginDevice, alive_workers, engine_stats

__all__ = [
    # hooks: decorate a plugin's hook implementations (inference/hookspecs.py lists the hooks)
    "hookimpl",
    # backends (register_backends): the interface, what a request carries, what it yields
    "Backend", "BackendError", "PromptTooLong", "GenerationRequest", "SamplingParams",
    "Delta", "Queued", "Finish",
    # what generation_finished is handed
    "GenerationResult",
    # models (register_models, choose_backend, model_features): configs and GGUF headers
    "ModelConfig", "UnknownModel", "all_models", "get_model", "GGUFError", "GGUFInfo", "read_gguf_info",
    # prompts and streams: chat templates, tool-call text (the <tool_call> format), partial tags
    "ChatTemplate", "toolcalls", "partial_tag",
    # tools (register_tools)
    "Tool", "ToolContext", "Outcome",
    # devices (register_devices) and what the device workers report
    "PluginDevice", "alive_workers", "engine_stats", "current_worker_id",
    # routes a plugin mounts for machines (register_routes): who may read them
    "probe_access", "GRANTED", "ANONYMOUS", "INVALID_TOKEN", "FORBIDDEN",
]
