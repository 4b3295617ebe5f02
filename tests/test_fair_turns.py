"""Fair turns in the shared step (plugins.llama_cpp.fairness.decode_jobs), on jobs as the engine
holds them: a sequence whose own part of the step costs more than its share (a big grammar's
filtering, attention over a long context) decodes only every few steps while another user
streams, and at full speed alone."""
from types import SimpleNamespace

from plugins.llama_cpp.fairness import ROW_SHARE, decode_jobs

STEP = 0.010  # the streams' measured step time (seconds)
KV_SHARE = 0.0002  # one context token's attention, as a share of a step (SmolLM2-135M: 0.00024)


class Job(SimpleNamespace):
    __hash__ = object.__hash__  # the engine's jobs are compared by identity
    __eq__ = object.__eq__


def job(user, cost=0.0, context=100):
    return Job(user=user, priority="interactive", pending=1, last_decoded=-1, kv=[0] * context,
               sampler=SimpleNamespace(recent_cost=cost))


def turns(jobs, steps=60):
    counts = {id(j): 0 for j in jobs}
    for step in range(steps):
        for chosen in decode_jobs(jobs, step, STEP, KV_SHARE):
            counts[id(chosen)] += 1
    return [counts[id(j)] for j in jobs]


def test_a_costly_sampler_takes_turns_in_proportion_to_its_cost_beside_another_user():
    costly, cheap = job("attacker", cost=3 * ROW_SHARE * STEP, context=0), job("victim")
    costly_turns, cheap_turns = turns([costly, cheap])
    assert cheap_turns == 60  # the other user's stream is never held back
    assert costly_turns == 20  # one step in three: its filtering costs each step at most the share


def test_a_long_context_takes_turns_in_proportion_to_its_length_beside_another_user():
    long_chat, short_chat = job("long", context=int(2 * ROW_SHARE / KV_SHARE)), job("short")
    assert turns([long_chat, short_chat]) == [30, 60]


def test_a_sequence_within_its_share_decodes_every_step():
    within, other = job("a", cost=ROW_SHARE * STEP / 2, context=int(ROW_SHARE / KV_SHARE / 2)), job("b")
    assert turns([within, other]) == [60, 60]


def test_alone_a_costly_sequence_decodes_every_step():
    costly, own = job("attacker", cost=10 * ROW_SHARE * STEP, context=8000), job("attacker")
    assert turns([costly, own]) == [60, 60]  # only its own user's streams share the step


def test_before_the_steps_are_measured_nobody_waits():
    costly, cheap = job("attacker", cost=1.0, context=8000), job("victim")
    assert decode_jobs([costly, cheap], 0, None, KV_SHARE) == [costly, cheap]


def test_two_costly_users_still_decode_every_step_rather_than_wait_for_each_other():
    a, b = job("a", context=8000), job("b", context=8000)
    assert turns([a, b]) == [60, 60]
