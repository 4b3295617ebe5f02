"""Through the generation service: a conversation's KV state survives other conversations using
the model in between, and the reused state gives the answer a cold model gives."""
import pytest

from inference.testing import make_request, run_request

pytestmark = pytest.mark.nodb

FACTS = " ".join(f"Fact {i}: {i} squared is {i * i}." for i in range(40))


def turn(registry, key, messages, user="alice"):
    request = make_request("m", "", max_tokens=12)
    request.messages, request.session_key, request.user_key = messages, key, user
    return run_request(registry, request)[0]


def test_returning_conversation_reuses_its_saved_state(bundled_registry):
    registry = bundled_registry()
    first = [{"role": "user", "content": FACTS + " What is 7 squared?"}]
    a1 = turn(registry, "conversation-a", first)
    assert a1.cached_tokens == 0
    b = turn(registry, "conversation-b", [{"role": "user", "content": "Hello! " + FACTS[:400]}])
    assert b.cached_tokens < 32  # only the shared template header, if anything
    follow_up = first + [{"role": "assistant", "content": a1.text}, {"role": "user", "content": "And 9?"}]
    a2 = turn(registry, "conversation-a", follow_up)
    assert a2.cached_tokens >= a1.prompt_tokens
    # The restored state is the right one: a fresh model gives the same greedy answer.
    request = make_request("m", "", max_tokens=12)
    request.messages = follow_up
    cold = run_request(bundled_registry(), request)[0]
    assert cold.cached_tokens == 0
    assert a2.text == cold.text
