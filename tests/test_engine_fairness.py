"""No user's legal request slows another user's running answer much, on the real SmolLM2-135M:
one user's several sequences (n=4, a batch) take turns in a step beside someone else's one,
and a long prompt shares the steps' time with a stream instead of filling each step with 128
prompt tokens. Read from the engine's own counters (steps, tokens decoded), never from a clock."""
import threading

import pytest
from test_batches_priority import finish_of, job_for

pytestmark = pytest.mark.model

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
