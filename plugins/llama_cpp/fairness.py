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
  for) and its attention over its own context (measured as steps run, from how their time moves
  with the cells their rows attend; a 5,500-token context costs a 2-core CPU six steps). A huge
  tool list or a long conversation then slows its owner, not everyone.
- **Prefill:** a prompt that fits one chunk (a chat message's) goes first and whole, as before. While
  others stream, longer prompts get a share of the engine's time, not a fixed number of tokens a
  step: over time, about PREFILL_SHARE of the streams' own time, times the number of users waiting
  over the number streaming, after a short burst. The costs are measured as the engine runs (a GPU's step is another shape
  than a CPU's). Before, a 7,000-token prompt took 128 tokens a step for its whole prefill, and a
  stream beside it got a token every ~0.4 s instead of every ~8 ms. A prompt is long by cost, not
  only by tokens: the last 37 tokens of a follow-up to a cached 5,500-token tool list attend
  5,500 cells each and took 2.4 s in one step.
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
# Steps of fewer rows than this attend one cell at a time (llama.cpp's CPU flash attention tiles
# 64 query rows): where a row's cost grows with its context as the cell cost says.
SMALL_STEP_ROWS = 64


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
    token, from the rest of mixed steps; one row's attention over one context cell, from how
    decode-only steps' time moves with the cells their rows attend) and the prompts' time credit
    while others stream."""

    def __init__(self, context_share=0.0):
        # One context cell's attention as a share of a decode step until the steps measure it
        # (engine.kv_share_of: the model's KV bytes per token over its weights' bytes).
        self.fallback_share = context_share
        self.decode_step = None  # seconds
        self.prefill_token = None  # seconds
        # Decode-only steps' time against the context cells their rows attend: running means,
        # variance and covariance, whose ratio is the seconds one row spends per cell. A model's
        # bytes said 1.3 steps for a 5,500-token context on a 2-core EPYC; it took 6 (attention
        # of a few rows runs one cell at a time there, not as a matrix product).
        self.cells = Moments()
        self.credit = BURST_SECONDS
        self.share = None  # this step's prompt share, when others were streaming
        self.began = None
        self.steps = 0
        self.measured_at = None  # the step that last timed the streams alone

    def start(self):
        self.began = time.perf_counter()

    def cell_cost(self):
        """Seconds a row spends per context cell it attends: the model's estimate, or more where
        the steps have measured more (None before any step was timed). The estimate is a floor:
        it counts only reading the cells, and a noisy machine can make the measured slope read
        near nothing, which would let a long context decode every step beside everyone."""
        if not self.decode_step:
            return None
        return max(self.cells.slope() or 0.0, self.fallback_share * self.decode_step)

    def context_share(self):
        """What one context cell of a sequence costs the step, as a share of a decode step."""
        cost = self.cell_cost()
        return cost / self.decode_step if cost is not None and self.decode_step else self.fallback_share

    def prompt_cost(self, tokens, context):
        """Seconds ``tokens`` prompt tokens take at ``context`` cells of their sequence, once the
        costs are measured (None before): each attends about its context, which at 5,500 cells
        costs a CPU more than the weights do."""
        if not self.prefill_token:
            return None
        return tokens * (self.prefill_token + (self.cell_cost() or 0.0) * context)

    def longer_than_chunk(self, tokens, context, chunk_tokens):
        """Whether ``tokens`` prompt tokens at ``context`` cells cost more than a chunk of prompt at
        none (False while nothing is measured: then tokens alone decide)."""
        cost = self.prompt_cost(tokens, context)
        return cost is not None and cost > self.prompt_cost(chunk_tokens, 0)

    def prefill_budget(self, decoding, waiting, most, context=0):
        """Prompt tokens this step may take, with ``decoding`` jobs streaming and ``waiting``
        jobs prefilling, whose tokens attend about ``context`` cells; ``most`` when no one else
        is streaming."""
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
        return max(1, min(most, int(self.credit / self.prompt_cost(1, context))))

    def done(self, decoded, prefilled, decode_cells=0, prompt_cells=0):
        """A step ran: ``decoded`` streams' tokens and ``prefilled`` prompt tokens, whose rows
        attended ``decode_cells`` and ``prompt_cells`` context cells in all."""
        self.record(time.perf_counter() - self.began, decoded, prefilled, decode_cells, prompt_cells)

    def record(self, elapsed, decoded, prefilled, decode_cells=0, prompt_cells=0):
        self.steps += 1
        if prefilled == 0:
            self.decode_step = _smooth(self.decode_step, elapsed)
            if decoded < SMALL_STEP_ROWS:
                self.cells.add(decode_cells, elapsed)
            self.measured_at = self.steps
        elif decoded and self.decode_step is not None:
            # A prompt token's own part, its context's attention apart (where the cell cost
            # measured on decode steps holds: steps of few rows).
            context = (self.cell_cost() or 0.0) * prompt_cells if decoded + prefilled < SMALL_STEP_ROWS else 0.0
            self.prefill_token = _smooth(self.prefill_token, max(elapsed - self.decode_step - context, 0.0) / prefilled)
        elif not decoded and prefilled >= 16:  # alone, the step's fixed part is spread thin enough
            self.prefill_token = _smooth(self.prefill_token, elapsed / prefilled)
        if self.share is None or not decoded:
            self.credit = BURST_SECONDS  # nobody else waited on this step
        elif self.decode_step is not None and self.prefill_token:
            earned = self.share * self.decode_step - prefilled * self.prefill_token
            self.credit = min(BURST_SECONDS, self.credit + earned)
        self.share = None


class Moments:
    """Exponentially weighted means, variance and covariance of (x, y) pairs: the slope of y on x
    over recent steps, once x has varied enough to tell (pacing makes steps with and without a
    long context, so it does where it matters)."""

    WEIGHT = 0.05
    MIN_SPREAD = 256  # cells: below this standard deviation of x the slope is noise
    MIN_PAIRS = 16

    def __init__(self):
        self.n = 0
        self.mx = self.my = self.vx = self.cxy = 0.0

    def add(self, x, y):
        self.n += 1
        if self.n == 1:
            self.mx, self.my = float(x), float(y)
            return
        w = self.WEIGHT
        dx, dy = x - self.mx, y - self.my
        self.mx += w * dx
        self.my += w * dy
        self.vx = (1 - w) * (self.vx + w * dx * dx)
        self.cxy = (1 - w) * (self.cxy + w * dx * dy)

    def slope(self):
        if self.n < self.MIN_PAIRS or self.vx < self.MIN_SPREAD ** 2:
            return None
        return max(0.0, self.cxy / self.vx)


def _smooth(old, new):
    return new if old is None else old + SMOOTHING * (new - old)
