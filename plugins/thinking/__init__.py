"""SmolLM3-style reasoning ("thinking") as a plugin: feature detection from the chat template,
the on/off switch in the prompt, and the stream filter that separates reasoning from the answer.

Block it (``SMOLSITE_BLOCKED_PLUGINS=thinking``) and none of this happens: no "thinking"
feature, prompts rendered with the template's defaults, model output passed through unchanged.
"""
from inference.plugin_api import hookimpl

from .parser import ThinkParser
from .template import thinking_style, with_flag


@hookimpl
def model_features(model, info):
    return ["thinking"] if thinking_style(info) else []


@hookimpl
def prepare_request(request, model, info):
    style = thinking_style(info)
    if style is None:
        return
    thinking = bool(request.thinking)
    if style.keyword:
        request.template_kwargs["enable_thinking"] = thinking
    if style.system_flags:
        # The system flag wins over enable_thinking in SmolLM3's template, so a flag the user
        # typed into the system prompt must not outvote the conversation's toggle.
        request.system_prompt = with_flag(request.system_prompt, thinking)


@hookimpl
def register_stream_filters(request, model, info):
    return ThinkParser() if thinking_style(info) else None
