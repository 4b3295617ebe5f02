"""Which chat templates can switch reasoning on and off, and how to ask them to.

Detection reads the model's own chat template (GGUF ``tokenizer.chat_template``), never the
file or model name: a template "switches reasoning" when ``enable_thinking`` or a ``/think`` /
``/no_think`` system flag changes how it starts the assistant's reply (probed by rendering a
one-line chat, cached per template). SmolLM3's template (see docs/smollm3.md) picks the mode so:

* ``enable_thinking`` (template keyword, default true) picks ``/think`` or ``/no_think``;
* a ``/no_think`` or ``/think`` anywhere in the system message overrides it (``/no_think`` is
  checked first) and is removed from the custom instructions shown to the model;
* in ``/no_think`` mode every assistant turn, and the generation prompt, get an empty
  ``<think>\\n\\n</think>\\n`` block; in ``/think`` mode earlier assistant turns are rendered
  without any think block, so earlier reasoning never reaches the prompt.
"""
import functools
from dataclasses import dataclass
from typing import Optional

from jinja2.exceptions import TemplateError

from inference.plugin_api import ChatTemplate

THINK_FLAG = "/think"
NO_THINK_FLAG = "/no_think"
_PROBE = "smolsite-probe-7f3a"


@dataclass(frozen=True)
class ThinkingStyle:
    keyword: bool  # ``enable_thinking`` changes the start of the reply
    system_flags: bool  # ``/think`` / ``/no_think`` in the system message change it


def thinking_style(info) -> Optional[ThinkingStyle]:
    """How the chat template of ``info`` (a GGUFInfo, or None) switches reasoning; None if it can't."""
    return _style_of(getattr(info, "chat_template", "") or "")


@functools.lru_cache(maxsize=64)
def _style_of(source):
    if "<think>" not in source:
        return None
    if "enable_thinking" not in source and NO_THINK_FLAG not in source:
        return None
    try:
        template = ChatTemplate(source)
    except TemplateError:
        return None

    def reply_start(messages, **kwargs):
        """What the template puts after the last user message: the start of the reply."""
        try:
            # A fixed date, so that two renders differ only by what is being probed.
            text = template.render(messages, strftime_now=lambda fmt: "01 January 2025", **kwargs)
        except Exception:  # a template that cannot render this probe says nothing about it
            return None
        at = text.rfind(_PROBE)
        return text if at < 0 else text[at + len(_PROBE):]

    user = [{"role": "user", "content": _PROBE}]
    on, off = reply_start(user, enable_thinking=True), reply_start(user, enable_thinking=False)
    keyword = None not in (on, off) and on != off
    on = reply_start([{"role": "system", "content": THINK_FLAG}] + user)
    off = reply_start([{"role": "system", "content": NO_THINK_FLAG}] + user)
    system_flags = None not in (on, off) and on != off
    if not (keyword or system_flags):
        return None
    return ThinkingStyle(keyword=keyword, system_flags=system_flags)


def strip_flags(system_prompt):
    """The system prompt without reasoning flags. Repeated until none is left, because removing
    one occurrence can join its neighbours into a new one ("/no/no_think_think")."""
    text = system_prompt or ""
    while NO_THINK_FLAG in text or THINK_FLAG in text:
        text = text.replace(NO_THINK_FLAG, "").replace(THINK_FLAG, "")
    return text.rstrip()


def with_flag(system_prompt, thinking):
    """The system prompt carrying exactly one flag, last, for the requested mode.

    The template removes flags from the custom instructions and right-strips them, so what the
    model reads as instructions is ``strip_flags(system_prompt)`` whichever flag is added.
    """
    flag = THINK_FLAG if thinking else NO_THINK_FLAG
    base = strip_flags(system_prompt)
    return f"{base}\n{flag}" if base else flag
