"""What one engine step puts through llama_decode: the scheduling decision in one place.

The engine admits requests (``scheduler.Scheduler``: who goes in next), then asks ``plan_step``
which rows this step holds; it only fills the llama batch, decodes and samples. A request's
state says which kind of rows it may get, as llama.cpp's server slot states and vLLM's request
states do.
"""
import enum
from dataclasses import dataclass, field

from .fairness import decode_jobs


class JobState(enum.Enum):
    WAITING = "waiting"  # in the scheduler's line, holding no sequence
    PREFILLING = "prefilling"  # admitted; some prompt tokens are not in the KV cache yet
    DECODING = "decoding"  # its last sampled token goes through the model next
    PAUSED = "paused"  # a background request that gave its place to a person; keeps its sequence
    FINISHED = "finished"  # its Finish was sent


@dataclass
class StepPlan:
    rows: list = field(default_factory=list)  # (job, token, position, wants_logits)
    decoding: list = field(default_factory=list)  # the jobs whose sampled token is in ``rows``

    def prompt_rows(self):
        return len(self.rows) - len(self.decoding)

    def cells(self):
        """Context cells the streams' rows and the prompts' rows attend (their positions)."""
        decode = sum(r[2] for r in self.rows[:len(self.decoding)])
        return decode, sum(r[2] for r in self.rows[len(self.decoding):])

    def is_long(self, costs, chunk_tokens):
        """A step of prompts alone that costs more than a chunk: long enough for a newcomer to
        notice, so the engine lets a person's arrival end it. By tokens, or by cost: 37 tokens
        of a prompt at 5,500 cells of context took 2.4 s on a 2-core EPYC."""
        if self.decoding or not self.rows:
            return False
        if len(self.rows) > chunk_tokens:
            return True
        return costs.longer_than_chunk(len(self.rows), self.cells()[1] / len(self.rows), chunk_tokens)


def plan_step(jobs, *, step, costs, batch_tokens, chunk_tokens):
    """The rows of the next step for the running ``jobs``: each decoding job's pending token
    (fair turns: ``fairness.decode_jobs``), then prompt chunks in the budget that leaves.
    ``costs`` is the engine's ``fairness.StepCosts``."""
    decoding = decode_jobs([j for j in jobs if j.state is JobState.DECODING], step, costs.decode_step,
                           costs.context_share())
    plan = StepPlan(rows=[(job, job.pending, len(job.kv), True) for job in decoding], decoding=decoding)
    prefilling = [j for j in jobs if j.state is JobState.PREFILLING]
    budget = batch_tokens - len(plan.rows)
    contended = bool(plan.rows) or len(prefilling) > 1
    if contended:
        # Others are streaming, or several prompts wait: small steps, so streams keep flowing
        # and the prompts that are nearly done get their first token soon, not all at the end.
        budget = min(budget, chunk_tokens)
    if plan.rows and prefilling and all(_long(j, costs, chunk_tokens) for j in prefilling):
        # Only long prompts wait (a prompt that fits one chunk, a chat message's, goes first
        # and whole, as its first token is what a person waits for): they share the streams' time.
        context = max(j.n_past for j in prefilling)
        budget = min(budget, costs.prefill_budget(decoding, prefilling, budget, context))
    if not prefilling:
        return plan
    # Shortest remaining prompt first: it minimises the mean wait for a first token. While
    # others wait or stream, a step completes at most one prompt, so eight short prompts sent at
    # once get their first tokens one short step apart, not all together after one long step (a
    # median of four short steps instead of eight). Among equals a different one leads each
    # step, so two long prompts share the chunks.
    start = step % len(prefilling)
    rotated = prefilling[start:] + prefilling[:start]
    # A person's prompt goes before any batch line's, so a short line admitted beside a chat
    # never takes the one prompt a contended step completes.
    for job in sorted(rotated, key=lambda j: (j.priority == "background", len(j.tokens) - j.n_past)):
        if budget <= 0:
            break
        take = min(len(job.tokens) - job.n_past, budget)
        for k in range(job.n_past, job.n_past + take):
            plan.rows.append((job, job.tokens[k], k, k == len(job.tokens) - 1))
        budget -= take
        if contended and job.n_past + take == len(job.tokens):
            break
    return plan


def _long(job, costs, chunk_tokens):
    """Whether a prompt's rest costs more than one chunk: by tokens, or by time where a short
    rest attends a long context (a follow-up to a 5,500-token tool list)."""
    rest = len(job.tokens) - job.n_past
    if len(job.tokens) - job.cached > chunk_tokens:
        return True
    return costs.longer_than_chunk(rest, job.n_past + rest / 2, chunk_tokens)
