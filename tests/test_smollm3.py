"""SmolLM3 end to end with a tiny random-weight SmolLM3-architecture GGUF (tests/smollm3_tiny.py):
llama.cpp loads it, the thinking plugin recognises it from its chat template, the prompt is
rendered in both reasoning modes exactly as SmolLM3's template renders them, and generation
runs through the real GenerationService."""
import pytest

from inference import plugins
from inference.backends import GenerationRequest, SamplingParams
from inference.registry import ModelRegistry
from inference.gguf_info import read_gguf_info
from inference.model_configs import ModelConfig, model_features, model_info
from inference.testing import run_service
from smollm3_tiny import N_LAYER, smollm3_template, write_tiny_smollm3

pytestmark = pytest.mark.nodb

FIXED_DATE = {"strftime_now": lambda fmt: "01 January 2025"}  # renders compared within a test
EMPTY_THINK = "<think>\n\n</think>\n"


@pytest.fixture(scope="session")
def smollm3_path(tmp_path_factory):
    return str(write_tiny_smollm3(tmp_path_factory.mktemp("smollm3") / "tiny-smollm3.gguf"))


@pytest.fixture(scope="module")
def registry(smollm3_path, default_model_path):
    """A private model registry: the tiny SmolLM3 on llama.cpp, plus echo-backend models that read the
    tiny file's (resp. SmolLM2's) metadata but answer deterministically."""
    registry = ModelRegistry()
    registry.load([
        ModelConfig(name="smollm3-tiny", path=smollm3_path, n_ctx=2048, threads=2),
        ModelConfig(name="smollm3-echo", path=smollm3_path, backend="echo"),
        ModelConfig(name="smollm2-echo", path=default_model_path, backend="echo"),
    ])
    yield registry
    registry.unload_all()


@pytest.fixture
def pm():
    """The process plugin manager with every built-in plugin, thinking included."""
    manager = plugins.build_plugin_manager(blocked=[])
    plugins.reset(manager)
    yield manager
    plugins.reset(None)


@pytest.fixture
def pm_blocked():
    manager = plugins.build_plugin_manager(blocked=["thinking"])
    plugins.reset(manager)
    yield manager
    plugins.reset(None)


def make_request(model, messages=None, system="", thinking=False, **params):
    if messages is None:
        messages = [{"role": "user", "content": "Hi"}]
    return GenerationRequest(id=f"req-{model}-{thinking}", model=model, messages=list(messages),
                             system_prompt=system, thinking=thinking, template_kwargs=dict(FIXED_DATE),
                             params=SamplingParams(**params))


def prepared_prompt(manager, backend, request):
    manager.hook.prepare_request(request=request, model=backend.model, info=model_info(backend.model))
    return backend.render_prompt(request)


def system_block(prompt):
    return prompt[:prompt.index("<|im_start|>user")]


# ---- the file -------------------------------------------------------------------------------

def test_tiny_file_is_smollm3_with_the_real_template_and_tokenizer(smollm3_path, default_model_path):
    info = read_gguf_info(smollm3_path)
    assert info.architecture == "smollm3"
    assert info.metadata["smollm3.block_count"] == N_LAYER
    assert info.chat_template == smollm3_template()
    smollm2 = read_gguf_info(default_model_path)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id"):
        assert info.metadata[key] == smollm2.metadata[key], key


def test_llama_cpp_loads_it_as_smollm3(registry):
    backend = registry.backend("smollm3-tiny")
    assert backend.name == "llama_cpp"
    assert backend.context_size == 2048
    # The copied tokenizer: ChatML markers are single special tokens.
    assert backend.llm_model.tokenize(b"<|im_start|>", add_bos=False, special=True) == [1]
    assert backend.llm_model.tokenize(b"<|im_end|>", add_bos=False, special=True) == [2]


# ---- features -------------------------------------------------------------------------------

def test_thinking_feature_comes_from_the_template(pm, smollm3_path, default_model_path):
    assert "thinking" in model_features(ModelConfig(name="s3", path=smollm3_path))
    assert "thinking" not in model_features(ModelConfig(name="s2", path=default_model_path))


def test_feature_does_not_come_from_the_file_name(pm, tmp_path, smollm3_path, default_model_path):
    # A SmolLM2 (ChatML) file called "SmolLM3": no feature.
    renamed = tmp_path / "SmolLM3-3B-Q4_K_M.gguf"
    renamed.symlink_to(default_model_path)
    assert "thinking" not in model_features(ModelConfig(name="fake3", path=str(renamed)))
    # The SmolLM3 template behind a neutral name: feature.
    plain = tmp_path / "model.gguf"
    plain.symlink_to(smollm3_path)
    assert "thinking" in model_features(ModelConfig(name="plain", path=str(plain)))


# ---- prompt rendering -----------------------------------------------------------------------

def test_think_mode_renders_like_the_template_with_enable_thinking_true(pm, registry):
    backend = registry.backend("smollm3-tiny")
    request = make_request("smollm3-tiny", system="You are terse.", thinking=True)
    original = request.chat_messages()
    prompt = prepared_prompt(pm, backend, request)
    block = system_block(prompt)
    assert "Reasoning Mode: /think\n" in block and "/no_think" not in block
    assert "## Custom Instructions\n\nYou are terse.\n\n" in block
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert EMPTY_THINK not in prompt
    assert prompt == backend.template.render(original, enable_thinking=True, **FIXED_DATE)


def test_no_think_mode_prefills_the_empty_think_block(pm, registry):
    backend = registry.backend("smollm3-tiny")
    request = make_request("smollm3-tiny", system="You are terse.", thinking=False)
    original = request.chat_messages()
    prompt = prepared_prompt(pm, backend, request)
    block = system_block(prompt)
    assert "Reasoning Mode: /no_think\n" in block
    assert "## Custom Instructions\n\nYou are terse.\n\n" in block
    assert prompt.endswith("<|im_start|>assistant\n" + EMPTY_THINK)
    assert prompt.count(EMPTY_THINK) == 1
    assert prompt == backend.template.render(original, enable_thinking=False, **FIXED_DATE)


@pytest.mark.parametrize("thinking", [True, False])
def test_no_system_prompt_renders_the_templates_default_instructions(pm, registry, thinking):
    backend = registry.backend("smollm3-tiny")
    request = make_request("smollm3-tiny", thinking=thinking)
    original = request.chat_messages()
    assert original == [{"role": "user", "content": "Hi"}]
    prompt = prepared_prompt(pm, backend, request)
    assert prompt == backend.template.render(original, enable_thinking=thinking, **FIXED_DATE)
    assert ("Reasoning Mode: /think\n" in prompt) is thinking
    assert ("Reasoning Mode: /no_think\n" in prompt) is not thinking


@pytest.mark.parametrize("thinking, typed", [(True, "/no_think"), (False, "/think")])
def test_the_toggle_wins_over_a_flag_typed_into_the_system_prompt(pm, registry, thinking, typed):
    backend = registry.backend("smollm3-tiny")
    request = make_request("smollm3-tiny", system=f"You are terse. {typed}", thinking=thinking)
    prompt = prepared_prompt(pm, backend, request)
    expected = backend.template.render(
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
        enable_thinking=thinking, **FIXED_DATE)
    assert prompt == expected
    assert prompt.endswith(EMPTY_THINK) is not thinking


MULTI_TURN = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "\n4", "reasoning": "SECRET-REASONING two plus two"},
    {"role": "user", "content": "And 3+3?"},
]


def test_earlier_reasoning_is_dropped_in_think_mode(pm, registry):
    backend = registry.backend("smollm3-tiny")
    request = make_request("smollm3-tiny", messages=MULTI_TURN, thinking=True)
    # The reasoning is handed to the template; the template is what leaves it out.
    assert request.chat_messages()[1]["reasoning_content"] == "SECRET-REASONING two plus two"
    prompt = prepared_prompt(pm, backend, request)
    assert "SECRET-REASONING" not in prompt
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n" \
           "<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n" in prompt
    assert EMPTY_THINK not in prompt


def test_earlier_turns_get_the_empty_think_block_in_no_think_mode(pm, registry):
    backend = registry.backend("smollm3-tiny")
    request = make_request("smollm3-tiny", messages=MULTI_TURN, thinking=False)
    prompt = prepared_prompt(pm, backend, request)
    assert "SECRET-REASONING" not in prompt
    assert "<|im_start|>assistant\n" + EMPTY_THINK + "4<|im_end|>\n" in prompt
    assert prompt.count(EMPTY_THINK) == 2  # the earlier turn and the generation prompt
    assert prompt.endswith("<|im_start|>assistant\n" + EMPTY_THINK)


# ---- generation -----------------------------------------------------------------------------

@pytest.mark.parametrize("thinking", [True, False])
def test_generation_through_the_service(pm, registry, thinking):
    backend = registry.backend("smollm3-tiny")
    request = make_request("smollm3-tiny", system="Be brief.", thinking=thinking,
                           temperature=0.8, max_tokens=8, seed=7)
    result, publisher, store = run_service(registry, request)
    assert (result.status, result.error) == ("done", "")
    assert result.backend == "llama_cpp"
    assert result.finish_reason in ("stop", "length")
    assert 1 <= result.completion_tokens <= 8
    # The plugin prepared the request the service rendered, and the token count is that prompt's.
    assert request.template_kwargs["enable_thinking"] is thinking
    assert request.system_prompt == "Be brief.\n" + ("/think" if thinking else "/no_think")
    assert result.prompt_tokens == backend.count_tokens(backend.render_prompt(request))
    events = publisher.events
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["kind"] == "start" and events[-1]["kind"] == "done"
    assert events[-1]["status"] == "done" and publisher.closed
    assert "".join(e["text"] for e in events if e["kind"] == "text") == result.text
    assert "".join(e["text"] for e in events if e["kind"] == "reasoning") == result.reasoning
    assert result.text + result.reasoning
    assert store.results[request.id] is result


ECHO_THOUGHT = "<think>Plan: greet.</think> Hello there"  # echo yields "<think>Plan:", " greet.</think>", ...


def echo_request(model, thinking=True):
    return make_request(model, messages=[{"role": "user", "content": ECHO_THOUGHT}], thinking=thinking)


def test_service_splits_reasoning_from_the_answer(pm, registry):
    result, publisher, _ = run_service(registry, echo_request("smollm3-echo"))
    assert result.status == "done"
    assert result.reasoning == "Plan: greet. "  # the space after </think> stays out of the answer
    assert result.text == "Hello there"
    assert result.reasoning_seconds is not None
    kinds = [e["kind"] for e in publisher.events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    streamed = [k for k in kinds if k in ("reasoning", "text")]
    assert "reasoning" in streamed and "text" in streamed
    assert streamed == sorted(streamed)  # all reasoning before any text


def test_no_filter_for_a_model_without_the_feature(pm, registry):
    model = registry.backend("smollm2-echo").model
    request = echo_request("smollm2-echo")
    pm.hook.prepare_request(request=request, model=model, info=model_info(model))
    assert request.system_prompt == "" and request.template_kwargs == FIXED_DATE
    assert [f for f in pm.hook.register_stream_filters(request=request, model=model, info=model_info(model))
            if f is not None] == []
    result, publisher, _ = run_service(registry, echo_request("smollm2-echo"))
    assert result.text == ECHO_THOUGHT and result.reasoning == ""
    assert result.reasoning_seconds is None
    assert not [e for e in publisher.events if e["kind"] == "reasoning"]


# ---- the plugin blocked ---------------------------------------------------------------------

def test_blocked_plugin_removes_the_feature(pm_blocked, registry, smollm3_path):
    assert pm_blocked.is_blocked("thinking")
    model = ModelConfig(name="s3", path=smollm3_path)
    assert "thinking" not in model_features(model)
    info = model_info(model)
    request = make_request("smollm3-tiny", system="You are terse.", thinking=True)
    pm_blocked.hook.prepare_request(request=request, model=model, info=info)
    assert request.system_prompt == "You are terse."
    assert request.template_kwargs == FIXED_DATE
    filters = pm_blocked.hook.register_stream_filters(request=request, model=model, info=info)
    assert [f for f in filters if f is not None] == []


def test_blocked_plugin_leaves_the_output_alone(pm_blocked, registry):
    result, publisher, _ = run_service(registry, echo_request("smollm3-echo"))
    assert result.status == "done"
    assert result.text == ECHO_THOUGHT and result.reasoning == ""
    assert not [e for e in publisher.events if e["kind"] == "reasoning"]
