"""A conversation's KV state survives another conversation using the model in between."""
import pytest

from inference.testing import make_request, run_request

FACTS = " ".join(f"Fact {i}: {i} squared is {i * i}." for i in range(40))


def turn(engine, key, messages):
    request = make_request("m", "", max_tokens=12)
    request.messages, request.session_key = messages, key
    return run_request(engine, request)[0]


def test_returning_conversation_reuses_its_saved_state(bundled_engine):
    engine = bundled_engine()
    first = [{"role": "user", "content": FACTS + " What is 7 squared?"}]
    a1 = turn(engine, "conversation-a", first)
    assert a1.cached_tokens == 0
    b = turn(engine, "conversation-b", [{"role": "user", "content": "Hello! " + FACTS[:400]}])
    assert b.cached_tokens < 32  # only the shared template header, if anything
    follow_up = first + [{"role": "assistant", "content": a1.text}, {"role": "user", "content": "And 9?"}]
    a2 = turn(engine, "conversation-a", follow_up)
    assert a2.cached_tokens >= a1.prompt_tokens
    # The restored state is the right one: a fresh model gives the same greedy answer.
    request = make_request("m", "", max_tokens=12)
    request.messages = follow_up
    cold = run_request(bundled_engine(), request)[0]
    assert cold.cached_tokens == 0
    assert a2.text == cold.text


def test_without_a_session_key_nothing_is_saved(bundled_engine):
    engine = bundled_engine(n_ctx=1024)
    turn(engine, "", [{"role": "user", "content": FACTS[:300]}])
    turn(engine, "", [{"role": "user", "content": "Something else. " + FACTS[:300]}])
    assert len(engine.backend("m").states.entries) == 0


def test_budget_evicts_the_least_recently_used_state(bundled_engine):
    engine = bundled_engine(n_ctx=1024)
    states = engine.backend("m").states
    turn(engine, "x", [{"role": "user", "content": "x " + FACTS[:300]}])
    turn(engine, "y", [{"role": "user", "content": "y " + FACTS[:300]}])
    one = states.size  # x's state, saved when y took the model
    assert list(states.entries) == ["x"] and one > 0
    states.budget = int(one * 2.5)
    turn(engine, "z", [{"role": "user", "content": "z " + FACTS[:300]}])
    assert list(states.entries) == ["x", "y"]
    turn(engine, "w", [{"role": "user", "content": "w " + FACTS[:300]}])
    assert list(states.entries) == ["y", "z"]  # x was the oldest
    assert states.size <= states.budget
