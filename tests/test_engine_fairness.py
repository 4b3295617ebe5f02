"""No user's legal request slows another user's running answer much, on the real SmolLM2-135M:
one user's several sequences (n=4, a batch) take turns in a step beside someone else's one,
and a long prompt shares the steps' time with a stream instead of filling each step with 128
prompt tokens. Read from the engine's own counters (steps, tokens decoded), never from a clock."""
import threading

import llama_cpp

import pytest
from test_batches_priority import finish_of, job_for

pytestmark = [pytest.mark.model, pytest.mark.nodb]

STORY = "Tell me a long story about a dragon who learns to bake bread."


def decoded_per_step(job):
    """Tokens decoded by everyone per engine step while ``job`` streamed."""
    (s0, d0), (s1, d1) = job.marks["first_token"], job.marks["finished"]
    return (d1 - d0) / max(s1 - s0, 1)


def test_one_users_four_sequences_take_turns_beside_another_users_one(bundled_registry):
    backend = bundled_registry(slots=6, user_concurrency=4).backend("m")
    engine = backend.engine
    crowd = [job_for(backend, STORY, "four", 200) for _ in range(4)]
    for job in crowd:
        engine.submit(job)
    while not all("first_token" in j.marks for j in crowd):  # all four streaming
        threading.Event().wait(0.02)
    victim = engine.submit(job_for(backend, STORY + " Make it short.", "victim", 40))
    finish = finish_of(victim)
    assert finish.reason == "length" and finish.completion_tokens == 40
    assert all("finished" not in j.marks for j in crowd), "the crowd ended first: nothing was shared"
    # Without turns every step held five tokens (the victim's and four); now the victim's and one.
    assert decoded_per_step(victim) <= 2.2, decoded_per_step(victim)
    for job in crowd:
        engine.cancel(job)
        finish_of(job)


def test_a_long_prompt_shares_the_steps_with_a_stream(bundled_registry):
    backend = bundled_registry(n_ctx=4096, chunk_tokens=128).backend("m")
    engine = backend.engine
    streamer = engine.submit(job_for(backend, STORY, "streamer", 2000))
    while "first_token" not in streamer.marks:
        threading.Event().wait(0.02)
    long_prompt = job_for(backend, "Summarise: " + "The quick brown fox jumps over the lazy dog. " * 110,
                          "long", 1)
    assert len(long_prompt.tokens) > 1100
    engine.submit(long_prompt)
    assert finish_of(long_prompt).reason in ("stop", "length")
    (s0, d0), (s1, d1) = long_prompt.marks["admitted"], long_prompt.marks["first_token"]
    # Both were in every step of the prefill (the streamer's token, then a slice of the prompt):
    # at 128 prompt tokens a step (the fixed chunk before) it would have taken ~9 steps.
    assert "finished" not in streamer.marks, "the stream ended first: nothing was shared"
    per_step = (d1 - d0) / (s1 - s0)
    assert per_step < 64, per_step
    engine.cancel(streamer)
    finish_of(streamer)


LONG_TEXT = "Summarise: " + "The quick brown fox jumps over the lazy dog. " * 150


def wait_for_long_step(engine):
    """Until a step of the long prompt alone is under way (its llama_decode running)."""
    while not engine.interruptible:
        threading.Event().wait(0.0005)


def test_a_person_arriving_during_a_long_prompt_step_goes_first_and_the_prompt_resumes_intact(bundled_registry):
    from test_engine import NEAR_TIE, Recording

    backend = bundled_registry(n_ctx=4096, batch_tokens=512, chunk_tokens=128).backend("m")
    engine = backend.engine
    # The reference: the long prompt alone, every step run to its end.
    alone = job_for(backend, LONG_TEXT, "long", 12)
    assert len(alone.tokens) > 1500
    alone.sampler = reference = Recording(engine.vocab, alone.params)
    engine.submit(alone)
    assert finish_of(alone).reason in ("stop", "length")
    assert engine.stats()["interrupted_steps"] == 0
    assert engine.forget_cached()

    long_job = job_for(backend, LONG_TEXT, "long", 12)
    long_job.sampler = resumed = Recording(engine.vocab, long_job.params)
    engine.submit(long_job)
    wait_for_long_step(engine)
    victim = engine.submit(job_for(backend, "Say hi.", "victim", 4))
    assert finish_of(victim).reason in ("stop", "length")
    assert finish_of(long_job).reason in ("stop", "length")

    assert engine.stats()["interrupted_steps"] >= 1
    # The victim's prompt went in the very next step, before the long prompt's first token.
    steps_waited = victim.marks["first_token"][0] - victim.marks["submitted"][0]
    assert steps_waited <= 2, steps_waited
    assert victim.marks["first_token"][0] < long_job.marks["first_token"][0]
    # llama.cpp dropped the ended step's cells and the engine's record agrees: the sequence holds
    # exactly the tokens the engine thinks it does, so the answer is the one it gives alone.
    mem = llama_cpp.llama_get_memory(engine.ctx)
    seq = long_job.seq
    assert llama_cpp.llama_memory_seq_pos_max(mem, seq.seq_id) + 1 == len(seq.tokens)
    assert seq.tokens[:len(long_job.tokens)] == long_job.tokens
    k = 0
    while k < min(len(reference.tokens), len(resumed.tokens)) and reference.tokens[k] == resumed.tokens[k]:
        k += 1
    assert k == len(reference.tokens) == len(resumed.tokens) or reference.margins[k] < NEAR_TIE, (
        reference.tokens, resumed.tokens, reference.margins)


def test_stop_ends_a_long_prompt_step_at_once(bundled_registry):
    backend = bundled_registry(n_ctx=4096, batch_tokens=512, chunk_tokens=128).backend("m")
    engine = backend.engine
    job = engine.submit(job_for(backend, LONG_TEXT, "long", 12))
    wait_for_long_step(engine)
    steps = engine.steps
    engine.cancel(job)
    finish = finish_of(job)
    assert finish.reason == "stopped" and finish.completion_tokens == 0
    assert engine.stats()["interrupted_steps"] == 1
    assert engine.steps == steps, "the step ran to its end"
    # The engine goes on: a next request is answered.
    after = engine.submit(job_for(backend, "Say hi.", "u", 4))
    assert finish_of(after).reason in ("stop", "length")
