"""Real generation with the bundled SmolLM2-135M through the plugin path, the generation
service and the Celery task, checked against raw llama-cpp-python on the same model."""
import pytest
from django.contrib.auth import get_user_model
from llama_cpp import Llama

from chat.models import Conversation, Message
from inference.stop import request_stop
from inference.tasks import generate
from inference.testing import MemoryStore, RecordingPublisher, make_request, run_request
from inference.service import GenerationService

QUESTION = "Write a short poem about the sea."
MAX = 40


@pytest.fixture(scope="module")
def raw_reference(default_model_path):
    # Flash attention as the engine has it (llama.cpp's "auto" turns it on for CPUs); the two
    # attention kernels round differently and this prompt's first greedy token is a near tie.
    llm = Llama(model_path=default_model_path, n_ctx=8192, n_threads=2, verbose=False, flash_attn=True)
    out = llm.create_chat_completion([{"role": "user", "content": QUESTION}], temperature=0.0, max_tokens=MAX)
    llm.close()
    return out["choices"][0]["message"]["content"], out["usage"]


@pytest.fixture
def cold_cache(loaded_registry):
    """No sequence cached from earlier tests: prompts prefill from scratch, as raw's does (a
    shared prefix computed in another batch rounds differently, and greedy text can drift)."""
    assert loaded_registry.backend("smollm2-135m").engine.forget_cached()


@pytest.mark.nodb
def test_service_matches_raw_llama_cpp_greedy(loaded_registry, raw_reference, cold_cache):
    text, usage = raw_reference
    result, events = run_request(loaded_registry, make_request("smollm2-135m", QUESTION, max_tokens=MAX))
    assert result.status == "done"
    assert result.text == text
    assert result.prompt_tokens == usage["prompt_tokens"]
    assert result.completion_tokens == usage["completion_tokens"]
    assert result.backend == "llama_cpp"
    assert result.ttft is not None and result.tokens_per_second > 0
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert "".join(e["text"] for e in events if e["kind"] == "text") == text
    assert events[0]["kind"] == "start" and events[-1]["kind"] == "done"
    assert events[-1]["stats"]["completion_tokens"] == usage["completion_tokens"]
    # What other users' earlier prompts saved this one is not the browser's business.
    assert "cached_tokens" not in events[-1]["stats"]


@pytest.mark.nodb
def test_special_tokens_never_reach_the_text(loaded_registry):
    result, _ = run_request(loaded_registry, make_request("smollm2-135m", "Say hi.", max_tokens=200))
    assert result.finish_reason == "stop"  # ended on <|im_end|>, which is not in the text
    assert "<|im_end|>" not in result.text and "<|im_start|>" not in result.text


@pytest.mark.nodb
def test_sampling_parameters_are_honoured(loaded_registry):
    def run(**params):
        return run_request(loaded_registry, make_request("smollm2-135m", QUESTION, **params))[0]

    a = run(temperature=1.0, top_p=0.9, seed=7, max_tokens=20)
    b = run(temperature=1.0, top_p=0.9, seed=7, max_tokens=20)
    c = run(temperature=1.0, top_p=0.9, seed=8, max_tokens=20)
    assert a.text == b.text  # same seed, same sample
    assert a.text != c.text
    short = run(max_tokens=5)
    assert short.completion_tokens == 5 and short.finish_reason == "length"
    full = run(max_tokens=MAX).text
    word = full.split()[3]
    cut = run(max_tokens=MAX, stop=[word])
    assert cut.text == full[: full.index(word)] and cut.finish_reason == "stop"


@pytest.mark.nodb
def test_stop_before_first_token(loaded_registry):
    request = make_request("smollm2-135m", QUESTION, request_id="early", max_tokens=MAX)
    request_stop("early")
    result, events = run_request(loaded_registry, request)
    assert result.status == "stopped"
    assert result.text == "" and result.completion_tokens == 0
    assert events[-1] == {**events[-1], "kind": "done", "status": "stopped"}


@pytest.mark.nodb
def test_the_first_text_goes_out_at_once_after_the_place_in_line_notice(loaded_registry):
    # The engine tells every job its place in line as it arrives. That flush must not hold the
    # first token back for a flush interval (it did: 35-50 ms on every answer's first token).
    flushed = []

    class NeverDue(RecordingPublisher):
        def __init__(self, group, message_id):
            super().__init__(group, message_id, flush_seconds=3600)

        def flush(self):
            pending = list(self._inner._pending)
            seq = super().flush()
            flushed.extend([e] for e in pending)
            if pending:
                flushed.append("|")
            return seq

    service = GenerationService(registry=loaded_registry, store=MemoryStore(), publisher_factory=NeverDue)
    result = service.run(make_request("smollm2-135m", QUESTION, request_id="first", max_tokens=12))
    kinds = [item[0]["kind"] if item != "|" else "|" for item in flushed]
    assert kinds[:4] == ["start", "|", "queue", "|"]  # the case this test is about
    texts = [item[0]["text"] for item in flushed if item != "|" and item[0]["kind"] == "text"]
    assert result.completion_tokens == 12 and "".join(texts) == result.text
    # The first text went out on its own, as soon as it was decoded; the rest waited for the end.
    assert kinds[4:6] == ["text", "|"] and len(texts) == 2 and texts[0] != result.text


@pytest.mark.nodb
def test_stop_mid_stream_keeps_partial_text(loaded_registry):
    full = run_request(loaded_registry, make_request("smollm2-135m", QUESTION, max_tokens=200))[0]

    class StopAfterFiveBatches(RecordingPublisher):
        def flush(self):
            seq = super().flush()
            if seq == 5:
                request_stop("mid")
            return seq

    store = MemoryStore()
    service = GenerationService(registry=loaded_registry, store=store,
                                publisher_factory=lambda g, m: StopAfterFiveBatches(g, m))
    result = service.run(make_request("smollm2-135m", QUESTION, request_id="mid", max_tokens=200))
    assert result.status == "stopped" and result.finish_reason == "stopped"
    assert result.text and full.text.startswith(result.text) and len(result.text) < len(full.text)
    assert 0 < result.completion_tokens < full.completion_tokens
    assert store.results["mid"].text == result.text


@pytest.mark.nodb
def test_context_overflow_drops_oldest_turns(bundled_registry):
    small_context_registry = bundled_registry("small-ctx", n_ctx=1024)
    filler = "lorem ipsum dolor sit amet " * 15  # ~100 tokens a turn
    request = make_request("small-ctx", "And now?", max_tokens=16)
    history = []
    for i in range(12):
        history += [{"role": "user", "content": f"{i} {filler}"}, {"role": "assistant", "content": "ok"}]
    request.messages = history + request.messages
    result, events = run_request(small_context_registry, request)
    assert result.status == "done"
    assert result.dropped_turns > 0 and result.dropped_turns % 2 == 0
    assert len(request.messages) == 25 - result.dropped_turns and request.messages[0]["role"] == "user"
    assert result.prompt_tokens + 16 <= 1024
    assert any(e["kind"] == "notice" and e["dropped_turns"] == result.dropped_turns for e in events)


@pytest.mark.nodb
def test_prompt_that_cannot_fit_is_a_clear_error(loaded_registry):
    result, _ = run_request(loaded_registry, make_request("smollm2-135m", "word " * 9000, max_tokens=16))
    assert result.status == "error"
    assert "the prompt is" in result.error and "context holds" in result.error


@pytest.mark.django_db(transaction=True)
def test_celery_task_generates_into_the_message_row(loaded_registry, raw_reference, cold_cache):
    text, usage = raw_reference
    user = get_user_model().objects.create_user("t", password="pw-123456789")
    conv = Conversation.objects.create(owner=user, model="smollm2-135m", temperature=0.0, max_tokens=MAX)
    question = Message.objects.create(conversation=conv, role="user", content=QUESTION)
    reply = Message.objects.create(conversation=conv, parent=question, role="assistant", status="pending",
                                   model_name="smollm2-135m")
    generate.apply(args=[str(reply.pk)], throw=True)
    reply.refresh_from_db()
    assert reply.status == "done"
    assert reply.content == text
    assert reply.prompt_tokens == usage["prompt_tokens"] and reply.completion_tokens == usage["completion_tokens"]
    assert reply.stream_seq > 1 and reply.finished_at is not None
    assert reply.finish_reason == ("length" if usage["completion_tokens"] == MAX else "stop")
    # A job that is no longer pending is not run twice.
    generate.apply(args=[str(reply.pk)], throw=True)
    reply.refresh_from_db()
    assert reply.content == text


@pytest.mark.django_db(transaction=True)
def test_a_plugin_failing_at_the_start_still_ends_the_message_as_an_error(loaded_registry, plugin_manager_reset):
    from chat.store import MessageStore
    from inference.hookspecs import hookimpl
    from inference.plugins import build_plugin_manager

    class BrokenObserver:
        @hookimpl
        def generation_started(self, request):
            raise RuntimeError("metrics store unreachable")

    pm = build_plugin_manager()
    pm.register(BrokenObserver(), name="broken-observer")
    plugin_manager_reset.reset(pm)
    user = get_user_model().objects.create_user("t", password="pw-123456789")
    conv = Conversation.objects.create(owner=user, model="smollm2-135m", temperature=0.0, max_tokens=MAX)
    question = Message.objects.create(conversation=conv, role="user", content=QUESTION)
    reply = Message.objects.create(conversation=conv, parent=question, role="assistant", status="pending",
                                   model_name="smollm2-135m")
    RecordingPublisher.instances.clear()
    service = GenerationService(registry=loaded_registry, store=MessageStore(),
                                publisher_factory=RecordingPublisher)
    request = service.store.claim(str(reply.pk), "test-worker")
    try:
        service.run(request)
    except RuntimeError:
        pass  # the row, not the caller, is what must show the failure
    reply.refresh_from_db()
    assert reply.status == "error" and "metrics store unreachable" in reply.error
    assert reply.finished_at is not None
    events = RecordingPublisher.instances[-1].events
    assert events[-1]["kind"] == "done" and events[-1]["status"] == "error"


@pytest.mark.nodb
def test_trimming_a_long_history_renders_a_logarithmic_number_of_times():
    """A 2,000-turn history that overflows the context is trimmed with ~log2(turns) renders (one per
    dropped turn used to hold a worker for minutes)."""
    from inference.backends import GenerationRequest, SamplingParams
    from inference.service import fit_prompt

    class CountingBackend:
        context_size = 1000
        renders = 0

        def render_prompt(self, request):
            CountingBackend.renders += 1
            return " ".join(m["content"] for m in request.messages)

        def count_tokens(self, text):
            return len(text.split())

    turns = []
    for i in range(1000):
        turns += [{"role": "user", "content": f"q{i} " + "w " * 8}, {"role": "assistant", "content": "a " * 10}]
    request = GenerationRequest(id="t", model="m", messages=turns + [{"role": "user", "content": "last"}],
                                params=SamplingParams(max_tokens=100))
    prompt, tokens = fit_prompt(CountingBackend(), request)
    assert CountingBackend.renders <= 14  # 1 + ceil(log2(1000 cuts)) + slack
    assert tokens + 100 <= 1000 and request.messages[0]["role"] == "user"
    # The smallest drop that fits: keeping one more turn pair would overflow.
    kept = len(request.messages)
    assert request.dropped_turns == len(turns) + 1 - kept
    longer = turns[len(turns) - (kept - 1) - 2:] + [{"role": "user", "content": "last"}]
    assert CountingBackend().count_tokens(" ".join(m["content"] for m in longer)) + 100 > 1000


@pytest.mark.nodb
def test_final_save_is_retried_and_done_goes_out_only_once_saved(loaded_registry, monkeypatch):
    from inference import service as service_module

    monkeypatch.setattr(service_module, "FINISH_RETRY_SECONDS", (0, 0, 0))

    class FlakyStore(MemoryStore):
        failures = 2

        def finish(self, job_id, result):
            if FlakyStore.failures:
                FlakyStore.failures -= 1
                raise RuntimeError("database restarting")
            return super().finish(job_id, result)

    result, events = run_request(loaded_registry, make_request("smollm2-135m", "Say hi.", max_tokens=4),
                                 store=FlakyStore())
    assert FlakyStore.failures == 0 and result.status == "done"
    assert [e["kind"] for e in events].count("done") == 1

    class DownStore(MemoryStore):
        def finish(self, job_id, result):
            raise RuntimeError("database gone")

    result, events = run_request(loaded_registry, make_request("smollm2-135m", "Say hi.", max_tokens=4),
                                 store=DownStore())
    assert "done" not in [e["kind"] for e in events]  # never announced: the row was not saved


@pytest.mark.django_db(transaction=True)
def test_a_reaped_message_is_not_flipped_back_to_done(loaded_registry):
    from chat.store import MessageStore
    from inference.service import GenerationResult

    user = get_user_model().objects.create_user("r", password="pw-123456789")
    conv = Conversation.objects.create(owner=user, model="smollm2-135m", temperature=0.0, max_tokens=8)
    question = Message.objects.create(conversation=conv, role="user", content=QUESTION)
    reply = Message.objects.create(conversation=conv, parent=question, role="assistant", status="pending",
                                   model_name="smollm2-135m")
    store = MessageStore()
    assert store.claim(str(reply.pk), "cpu@x:1") is not None
    # The reaper decided the worker was dead and told the tabs.
    Message.objects.filter(pk=reply.pk).update(status="interrupted", error="The worker stopped.")
    assert store.finish(str(reply.pk), GenerationResult(text="late text", completion_tokens=2)) is False
    reply.refresh_from_db()
    assert reply.status == "interrupted" and reply.content == ""
