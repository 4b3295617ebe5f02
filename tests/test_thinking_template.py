"""The thinking plugin's template side, without a model: which templates get the feature, and
that the toggle always decides SmolLM3's reasoning mode while the user's instructions survive."""
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plugins.thinking as thinking_plugin
from inference.backends import GenerationRequest
from inference.prompt import CHATML_TEMPLATE, ChatTemplate
from plugins.thinking.template import ThinkingStyle, strip_flags, thinking_style
from smollm3_tiny import smollm3_template

pytestmark = pytest.mark.nodb

FIXED_DATE = {"strftime_now": lambda fmt: "01 January 2025"}
EMPTY_THINK = "<think>\n\n</think>\n"
SMOLLM3 = smollm3_template()

# Qwen3-style: only the keyword switches, system-message flags mean nothing to the template.
KEYWORD_ONLY = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
# DeepSeek-R1-style: always reasons, no switch.
ALWAYS_THINKS = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}"
)
# Mentions the words but switches nothing.
MENTIONS_ONLY = (
    "{# enable_thinking and /no_think are not supported here #}"
    "{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}<think>{% endif %}"
)


def info(source):
    return SimpleNamespace(chat_template=source)


def request(system="", thinking=False):
    return GenerationRequest(id="r", model="m", messages=[{"role": "user", "content": "Hi"}],
                             system_prompt=system, thinking=thinking, template_kwargs=dict(FIXED_DATE))


@pytest.mark.parametrize("source, expected", [
    (SMOLLM3, ThinkingStyle(keyword=True, system_flags=True)),
    (KEYWORD_ONLY, ThinkingStyle(keyword=True, system_flags=False)),
    (ALWAYS_THINKS, None),
    (MENTIONS_ONLY, None),
    (CHATML_TEMPLATE, None),
    ("{% if enable_thinking %}<think>{% endif %", None),  # does not compile
    ("", None),
])
def test_detection(source, expected):
    assert thinking_style(info(source)) == expected
    assert thinking_plugin.model_features(model=None, info=info(source)) == (["thinking"] if expected else [])


def test_no_metadata_no_feature():
    assert thinking_style(None) is None
    assert thinking_plugin.model_features(model=None, info=None) == []
    assert thinking_plugin.register_stream_filters(request=request(), model=None, info=None) is None


def test_keyword_only_template_keeps_the_system_prompt():
    req = request(system="Be brief. /think", thinking=False)
    thinking_plugin.prepare_request(request=req, model=None, info=info(KEYWORD_ONLY))
    assert req.system_prompt == "Be brief. /think"
    assert req.template_kwargs["enable_thinking"] is False
    prompt = ChatTemplate(KEYWORD_ONLY).render(req.chat_messages(), **req.template_kwargs)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_non_thinking_template_leaves_the_request_alone():
    req = request(system="Be brief.", thinking=True)
    thinking_plugin.prepare_request(request=req, model=None, info=info(CHATML_TEMPLATE))
    assert req.system_prompt == "Be brief." and req.template_kwargs == FIXED_DATE


def test_strip_flags_leaves_no_flag_even_when_removal_joins_one():
    assert strip_flags("a /no/no_think_think b /think") == "a  b"
    assert strip_flags("/no_/thinkthink") == ""  # "/no_" + "think" would be "/no_think"


SYSTEM_FRAGMENTS = ["/think", "/no_think", "/no", "_think", "/", "think", "Be brief.", " ", "\n",
                    "/system_override", "Ünïcode", "<think>"]


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.sampled_from(SYSTEM_FRAGMENTS), max_size=8), toggle=st.booleans())
def test_the_toggle_decides_the_mode_for_any_system_prompt(parts, toggle):
    system = "".join(parts)
    template = ChatTemplate(SMOLLM3)
    req = request(system=system, thinking=toggle)
    thinking_plugin.prepare_request(request=req, model=None, info=info(SMOLLM3))
    prompt = template.render(req.chat_messages(), **req.template_kwargs)
    assert prompt.endswith("<|im_start|>assistant\n" + EMPTY_THINK) is not toggle
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n") is toggle
    instructions = strip_flags(system)
    if "/system_override" not in system:
        assert ("Reasoning Mode: /think\n" in prompt) is toggle
        assert ("Reasoning Mode: /no_think\n" in prompt) is not toggle
        if instructions:
            assert "## Custom Instructions\n\n" + instructions + "\n\n" in prompt
    # Without flags in the user's prompt, the result is exactly the template's own rendering.
    if "/think" not in system and "/no_think" not in system:
        original = ([{"role": "system", "content": system}] if system else []) + req.messages
        assert prompt == template.render(original, enable_thinking=toggle, **FIXED_DATE)
