"""Who may use how much of one engine step, so that no user's request slows another user's
running answer by more than about half (everyone waits for the whole step, and on a CPU a step
costs a few milliseconds plus a few more per token in it).

- **Decoding:** while several users stream, each puts the same number of sequences in a step:
  the smallest number any person (interactive) user has running. One user's ``n=4`` or a batch
  of lines then takes turns among its own sequences instead of making the step five times as
  long for someone with one answer.
- **Costly sequences:** a sequence whose own part of a step costs more than ROW_SHARE of the
  step decodes only every few steps while other users stream, so it costs them at most that
  share. Its part is its grammar's filtering (measured; it runs inside the step everyone waits
  for) and its attention over its own context (estimated: reading a 5,000-token context's KV
  cache costs SmolLM2-135M more than reading its weights). A huge tool list or a long
  conversation then slows its owner, not everyone.
- **Prefill:** a prompt that fits one chunk (a chat message's) goes first and whole, as before. While
  others stream, longer prompts get a share of the engine's time, not a fixed number of tokens a
  step: over time, about PREFILL_SHARE of the streams' own time, times the number of users waiting
  over the number streaming, after a short burst. The costs are measured as the engine runs (a GPU's step is another shape
  than a CPU's). Before, a 7,000-token prompt took 128 tokens a step for its whole prefill, and a
  stream beside it got a token every ~0.4 s instead of every ~8 ms.
"""
import time

# The prompts' part of a contended step, relative to the streams' part (a stream then runs at
# 1 / (1 + PREFILL_SHARE) of its speed alone, given one user waiting per user streaming).
PREFILL_SHARE = 0.7
FIRST_GUESS_TOKENS = 4  # a prompt's tokens per contended step until the costs are measured
BURST_SECONDS = 0.15  # prompt time that may go at once (a chat message's prompt, on a CPU)
REMEASURE_STEPS = 64  # a contended step without prompt tokens at least this often, to time the streams
SMOOTHING = 0.2
# What one sequence's own part (sampling, attention over its context) may add to a contended
# step, on average, as a share of the step: a step with two short streams is ~1.3x one, so a
# costly sequence then costs a neighbour about what a second neighbour would.
ROW_SHARE = 0.3


def decode_jobs(jobs, step, decode_step=None, kv_share=0.0):
    """The jobs whose pending token goes into this step; the others wait a step or more.
    Within a user, the one that waited longest goes first. ``decode_step``: the streams' measured
    step time (seconds), which a costly sequence's turns are paced against; ``kv_share``: what one
    context token's attention costs, as a share of a step (the model's KV bytes per token over
    its weights' bytes)."""
    pending = [j for j in jobs if j.pending is not None]
    by_user = {}
    for job in pending:
        by_user.setdefault(job.user, []).append(job)
    if len(by_user) <= 1:
        chosen = pending
    else:
        people = [len(js) for js in by_user.values() if any(j.priority == "interactive" for j in js)]
        cap = min(people or [len(js) for js in by_user.values()])
        chosen = set()
        for own in by_user.values():
            chosen.update(sorted(own, key=lambda j: j.last_decoded)[:cap])
        chosen = [j for j in pending if j in chosen]
        # Pacing only spares the others: when no one would decode, everyone does (the step
        # counter, which paces, moves only when a step runs).
        chosen = [j for j in chosen if _due(j, step, decode_step, kv_share)] or chosen
    for job in chosen:
        job.last_decoded = step
    return chosen


def _due(job, step, decode_step, kv_share):
    """Whether a sequence's turn has come, given what its own part costs the shared step."""
    if not decode_step:
        return True
    sampling = job.sampler.recent_cost if job.sampler is not None else 0.0
    share = sampling / decode_step + kv_share * len(job.kv)
    return share <= ROW_SHARE or step - job.last_decoded >= share / ROW_SHARE


class StepCosts:
    """Measured cost of a step's parts (the streams' tokens, from decode-only steps; one prompt
    token, from the rest of mixed steps) and the prompts' time credit while others stream."""

    def __init__(self):
        self.decode_step = None  # seconds
        self.prefill_token = None  # seconds
        self.credit = BURST_SECONDS
        self.share = None  # this step's prompt share, when others were streaming
        self.began = None
        self.steps = 0
        self.measured_at = None  # the step that last timed the streams alone

    def start(self):
        self.began = time.perf_counter()

    def prefill_budget(self, decoding, waiting, most):
        """Prompt tokens this step may take, with ``decoding`` jobs streaming and ``waiting``
        jobs prefilling; ``most`` when no one else is streaming."""
        streaming_users = {j.user for j in decoding}
        waiting_users = {j.user for j in waiting}
        if not streaming_users - waiting_users:
            self.share = None  # only the waiting users' own streams would wait
            return most
        self.share = PREFILL_SHARE * len(waiting_users) / len(streaming_users)
        if self.measured_at is None or self.steps - self.measured_at > REMEASURE_STEPS:
            return 0  # the streams alone this step: what they cost now (it changes with their number)
        if not self.prefill_token:
            return min(most, FIRST_GUESS_TOKENS)
        return max(1, min(most, int(self.credit / self.prefill_token)))

    def done(self, decoded, prefilled):
        elapsed = time.perf_counter() - self.began
        self.steps += 1
        if prefilled == 0:
            self.decode_step = _smooth(self.decode_step, elapsed)
            self.measured_at = self.steps
        elif decoded and self.decode_step is not None:
            self.prefill_token = _smooth(self.prefill_token, max(elapsed - self.decode_step, 0.0) / prefilled)
        elif not decoded and prefilled >= 16:  # alone, the step's fixed part is spread thin enough
            self.prefill_token = _smooth(self.prefill_token, elapsed / prefilled)
        if self.share is None or not decoded:
            self.credit = BURST_SECONDS  # nobody else waited on this step
        elif self.decode_step is not None and self.prefill_token:
            earned = self.share * self.decode_step - prefilled * self.prefill_token
            self.credit = min(BURST_SECONDS, self.credit + earned)
        self.share = None


def _smooth(old, new):
    return new if old is None else old + SMOOTHING * (new - old)
