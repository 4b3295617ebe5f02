"""Fair turns in the shared step (plugins.llama_cpp.fairness.decode_jobs), on jobs as the engine
holds them: a sequence whose own part of the step costs more than its share (a big grammar's
filtering, attention over a long context) decodes only every few steps while another user
streams, and at full speed alone."""
from types import SimpleNamespace

import pytest

from plugins.llama_cpp.fairness import ROW_SHARE, StepCosts, decode_jobs
from plugins.llama_cpp.step_plan import JobState, plan_step

pytestmark = pytest.mark.nodb

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


# ---- what a step costs, measured (fairness.StepCosts) and used (step_plan.plan_step) ----------

def measured_costs(cell_cost=1e-5, base=0.013, prefill_token=0.003):
    """StepCosts after decode steps that alternate short and 5,500-cell contexts (as pacing makes
    them), each taking ``base`` plus ``cell_cost`` a cell, and mixed steps timing prompt tokens."""
    costs = StepCosts(context_share=0.0002)
    for k in range(40):
        cells = 200 if k % 2 else 5700
        costs.record(base + cell_cost * cells, decoded=2, prefilled=0, decode_cells=cells)
    for _ in range(20):
        costs.record(costs.decode_step + 16 * prefill_token, decoded=1, prefilled=16)
    return costs


def test_the_cost_of_a_context_cell_is_measured_from_the_steps():
    costs = measured_costs(cell_cost=1e-5)
    assert abs(costs.cell_cost() - 1e-5) < 1e-6
    assert abs(costs.context_share() - 1e-5 / costs.decode_step) < 1e-6
    assert abs(costs.prefill_token - 0.003) < 3e-4


def test_before_contexts_vary_the_model_estimate_stands_in():
    costs = StepCosts(context_share=0.0002)
    for _ in range(40):
        costs.record(0.013, decoded=2, prefilled=0, decode_cells=300)
    assert costs.context_share() == 0.0002
    assert abs(costs.cell_cost() - 0.0002 * 0.013) < 1e-9


def test_a_slope_that_reads_near_nothing_never_goes_below_the_model_estimate():
    """A noisy machine can make long and short contexts' steps look alike; the model's estimate
    (reading the cells) then still paces a long context."""
    costs = StepCosts(context_share=0.0002)
    for k in range(40):
        cells = 200 if k % 2 else 5700
        costs.record(0.013 if k % 4 < 2 else 0.012, decoded=2, prefilled=0, decode_cells=cells)
    assert costs.cells.slope() is not None and costs.cells.slope() < 1e-7
    assert costs.context_share() == 0.0002


def state_job(user, state, tokens=0, n_past=0, context=0):
    return Job(user=user, priority="interactive", state=state, pending=1 if state is JobState.DECODING else None,
               last_decoded=-1, kv=[0] * context, sampler=SimpleNamespace(recent_cost=0.0), tokens=[1] * tokens,
               n_past=n_past, cached=n_past)


def test_a_short_prompt_rest_at_a_long_context_shares_the_streams_time():
    """A follow-up to a cached 5,500-token tool list has 37 tokens left, each attending 5,500
    cells: short by count, it costs seconds. Beside another user's stream it gets a share of the
    step, not the whole of it; with nothing measured it went whole."""
    victim = state_job("victim", JobState.DECODING, context=60)
    tail = state_job("attacker", JobState.PREFILLING, tokens=5537, n_past=5500)
    plan = plan_step([victim, tail], step=100, costs=measured_costs(), batch_tokens=512, chunk_tokens=128)
    assert plan.decoding == [victim]
    assert 0 < plan.prompt_rows() <= 3  # about BURST_SECONDS of its time, not 37 rows at 58 ms each

    plan = plan_step([victim, tail], step=100, costs=StepCosts(), batch_tokens=512, chunk_tokens=128)
    assert plan.prompt_rows() == 37  # unmeasured: a short prompt, whole


def test_a_prompt_step_alone_is_long_by_cost_so_a_newcomer_may_end_it():
    tail = state_job("attacker", JobState.PREFILLING, tokens=5537, n_past=5500)
    costs = measured_costs()
    plan = plan_step([tail], step=100, costs=costs, batch_tokens=512, chunk_tokens=128)
    assert plan.prompt_rows() == 37 and plan.is_long(costs, 128)
    short = state_job("someone", JobState.PREFILLING, tokens=40)
    plan = plan_step([short], step=100, costs=costs, batch_tokens=512, chunk_tokens=128)
    assert plan.prompt_rows() == 40 and not plan.is_long(costs, 128)
