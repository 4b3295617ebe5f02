"""A deleted account's cached conversation state leaves the device workers: the web process notes
the user (inference.erasure), each worker's reporter thread hands the note to its engines, and
the engine drops the user's resident sequences and host-RAM states, nobody else's. On the real
SmolLM2-135M with the real cache and reporter thread."""
import threading

import pytest
from test_engine import collect, follow_up, request

pytestmark = pytest.mark.model

HISTORY = "Remember these words: " + " ".join(f"word{i}" for i in range(80)) + "."


def owners(table):
    return {s.owner for s in table.seqs if s.owner and s.tokens} | {o for o, _, _ in table.host.entries.values()}


@pytest.mark.django_db
def test_a_deleted_users_cached_state_leaves_the_engine_through_the_workers_reporter(bundled_registry):
    from inference import erasure
    from inference.workers import EngineReporter

    registry = bundled_registry(slots=3, resident_cells=64)
    backend = registry.backend("m")
    table = backend.engine.table
    gone, kept = erasure.user_keys(41)[0], "user-42"
    texts = {}
    for user in (gone, kept):
        texts[user], _, _ = collect(backend, request(HISTORY, user=user, max_tokens=4))
    collect(backend, request("Say hello.", user="user-43", max_tokens=4))  # pushes one to host RAM
    assert {gone, kept} <= owners(table) and table.host.entries, owners(table)

    reporter = EngineReporter("cpu@erasure:1", registry.stats, registry.forget_users).start()
    try:
        erasure.forget_user(41)
        for _ in range(400):  # the reporter looks every few seconds
            if gone not in owners(table):
                break
            threading.Event().wait(0.05)
    finally:
        reporter.stop()
    assert gone not in owners(table) and kept in owners(table)
    _, finish, _ = collect(backend, follow_up(gone, HISTORY, texts[gone], max_tokens=4))
    public = backend._tokenize(backend.render_prompt(request(HISTORY)))[1]
    assert finish.cached_tokens <= public  # nothing of theirs left to reuse
    _, finish, _ = collect(backend, follow_up(kept, HISTORY, texts[kept], max_tokens=4))
    assert finish.cached_tokens > 100  # the others' histories are untouched
    assert gone not in owners(table), "a sequence of a deleted user was kept after it finished"
