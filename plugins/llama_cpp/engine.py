"""The batching engine: one thread owns a llama.cpp context with several sequences and loops
admit -> build batch -> one llama_decode -> sample each sequence -> retire.

Every step decodes the running sequences' next tokens first and fills the rest of the batch
budget with prompt chunks (chunked prefill), so a long prompt never freezes other people's
streams. Callers talk to the thread only through ``submit`` and the job's output queue.
"""
import itertools
import logging
import queue
import threading

import llama_cpp

from inference.plugin_api import Delta, Finish, Queued

from .fairness import StepCosts
from .interrupt import ABORTED, StepInterrupt
from .kv import SequenceTable
from .sampling import Detokenizer, Sampler, StopStrings
from .scheduler import Scheduler
from .step_plan import JobState, plan_step

logger = logging.getLogger(__name__)

GRAMMAR_TOO_COSTLY = ("this response format costs the shared engine too much to enforce (its grammar was slowing "
                      "every answer on this server): use a smaller schema (fewer properties, alternatives or enum "
                      "values) or a prompt that asks for the JSON it describes")


class Job:
    """One request inside the engine; the caller reads ``out`` until a Finish arrives."""

    _ids = itertools.count(1)

    def __init__(self, tokens, params, user="", priority="interactive", grammar=None, public=0, sampler=None):
        self.id = next(self._ids)
        self.tokens = list(tokens)
        self.public = public  # leading tokens holding no user's text (shareable across users)
        self.params = params
        self.user = user or ""
        self.priority = priority
        self.grammar = grammar
        self.out = queue.Queue()
        self.cancelled = False
        # engine-thread state
        self.state = JobState.WAITING
        self.seq = None  # its KV sequence (kv.KvSequence) once admitted
        self.n_past = 0  # prompt tokens already in the KV cache
        self.cached = 0
        self.kv = []  # tokens in the KV cache for this sequence
        self.pending = None  # sampled token not yet decoded
        self.produced = 0
        self.position = None
        self.sampler = sampler  # made by the caller when it has a grammar, else at admission
        self.detok = self.stops = None
        # The engine's (steps, tokens decoded) when it was submitted, admitted and sampled its
        # first token: how long it waited in engine units, which a busy machine cannot blur.
        self.marks = {}
        self.pauses = 0  # times a person's request took its slot (background jobs)
        self.last_decoded = -1  # the engine step that last decoded its token (fair turns)

    def cancel(self):
        self.cancelled = True


def kv_share_of(model):
    """What attending over one context token costs a decode step, as a share of the step: the
    bytes of its keys and values (f16) over the weights' bytes, both read once per step. The first
    guess only (fairness.StepCosts measures it as steps run): where attention is bound by compute
    it costs more (a 2-core EPYC: one token at 5,500 context took 80 ms in a step that takes 13 ms
    without it, against 1.3 steps estimated)."""
    n_head = max(1, llama_cpp.llama_model_n_head(model))
    head_dim = llama_cpp.llama_model_n_embd(model) // n_head
    kv_bytes = 2 * llama_cpp.llama_model_n_layer(model) * llama_cpp.llama_model_n_head_kv(model) * head_dim * 2
    return kv_bytes / max(1, llama_cpp.llama_model_size(model))


class BatchEngine:
    def __init__(self, model, ctx, *, slots, batch_tokens, per_user, capacity, host_budget,
                 chunk_tokens=None, resident_cells=None, visible_special=(), name="engine"):
        self.model = model  # llama_cpp._internals.LlamaModel (tokenizer and vocab)
        self.ctx = ctx  # a raw llama_context pointer owned by this engine's thread
        self.vocab = model.vocab
        self.running_max = slots
        self.batch_tokens = batch_tokens
        # While others are streaming, a prompt advances this many tokens a step (their next token
        # waits for the whole step); alone, it takes the full batch and prefills at full speed.
        self.chunk_tokens = min(chunk_tokens or batch_tokens, batch_tokens)
        self.visible_special = set(visible_special)
        self.table = SequenceTable(ctx, n_seq=slots * 2, capacity=capacity, host_budget=host_budget,
                               resident_budget=resident_cells)
        self.scheduler = Scheduler(per_user=per_user)
        self.active = []
        self.llama_batch = llama_cpp.llama_batch_init(batch_tokens + slots, 0, 1)
        self.cv = threading.Condition()
        self.closing = False
        self.forget_requests = []
        self.forget_owners = set()  # deleted users, for the engine thread to drop
        self.steps = 0
        self.decoded = 0  # tokens through llama_decode, all sequences
        self.preemptions = 0
        self.last_fill = 0.0
        self.costs = StepCosts(context_share=kv_share_of(model.model))
        self.interrupt = StepInterrupt(ctx)
        self.interruptible = ()  # the jobs of a long prompt step under way with nobody else in it
        self.interruptions = 0
        self.thread = threading.Thread(target=self._run, name=f"smolsite-{name}", daemon=True)
        self.thread.start()

    # ---- caller side ------------------------------------------------------------------
    def submit(self, job):
        with self.cv:
            if self.closing:
                raise RuntimeError("the engine is shut down")
            self._mark(job, "submitted")
            self.scheduler.add(job, job.user, job.priority)
            if self.interruptible and self._admissible(job):
                self.interrupt.raise_()  # a person waits: they go in the next step, not after this one
            self._announce_positions()
            self.cv.notify()
        return job

    def cancel(self, job):
        with self.cv:
            job.cancel()
            if job in self.interruptible:
                self.interrupt.raise_()
            self.cv.notify()

    def forget_cached(self, timeout=30):
        """Drop every finished sequence and the host-RAM tier, so the next prompts are prefilled
        cold (for comparisons that must not depend on what ran before)."""
        done = threading.Event()
        with self.cv:
            self.forget_requests.append(done)
            self.cv.notify()
        return done.wait(timeout)

    def forget_users(self, owners):
        """Drop these users' cached sequences and host-RAM state at the engine's next look."""
        with self.cv:
            self.forget_owners.update(owners)
            self.cv.notify()

    def close(self):
        with self.cv:
            self.closing = True
            self.cv.notify()
        self.thread.join(timeout=30)
        if not self.thread.is_alive():
            llama_cpp.llama_batch_free(self.llama_batch)

    def stats(self):
        with self.cv:
            data = {"running": len(self.active), "waiting": len(self.scheduler), "slots": self.running_max,
                    "batch_fill": self.last_fill, "steps": self.steps,
                    "decoded_tokens": self.decoded, "preemptions": self.preemptions,
                    "interrupted_steps": self.interruptions}
            data.update(self.table.stats())
        return data

    # ---- engine thread ----------------------------------------------------------------
    def _run(self):
        while True:
            with self.cv:
                while not self.closing and not self.active and not len(self.scheduler) \
                        and not self.forget_requests and not self.forget_owners:
                    self.cv.wait()
                if self.closing:
                    break
                if self.forget_owners:
                    self.table.forget_owners(self.forget_owners)
                    self.forget_owners = set()
                if self.forget_requests and not self.active:
                    self.table.forget_idle()
                    for done in self.forget_requests:
                        done.set()
                    self.forget_requests = []
                self._drop_cancelled_waiting()
                self._admit()
                jobs = list(self.active)
            if not jobs:
                with self.cv:  # everyone waiting is over their per-user cap: nothing to do yet
                    self.cv.wait(0.05)
                continue
            try:
                self._step(jobs)
            except Exception as exc:  # never leave a caller waiting forever
                logger.exception("engine step failed")
                for job in jobs:
                    self._fail(job, f"the engine failed: {exc}")
        for job in list(self.active):
            self._finish(job, "stopped")
        for job in self.scheduler.order():
            self._end_waiting(job)

    def _drop_cancelled_waiting(self):
        for job in [j for j in self.scheduler.order() if j.cancelled]:
            self.scheduler.remove(job)
            self._end_waiting(job)

    def _end_waiting(self, job):
        if job.seq is not None:  # paused mid-answer: keep what it produced
            self._finish(job, "stopped")
        else:
            job.state = JobState.FINISHED
            if job.sampler is not None:
                job.sampler.close()
            job.out.put(Finish("stopped", len(job.tokens), 0))

    def _preempt_background(self):
        """Interactive requests wait while background ones fill every slot: pause the newest
        background sequence (its tokens stay in the KV cache) and put it back in line."""
        changed = False
        while len(self.active) >= self.running_max and self.scheduler.eligible("interactive"):
            paused = [j for j in self.active if j.priority == "background"]
            if not paused or not any(not s.busy for s in self.table.seqs):
                break
            job = max(paused, key=lambda j: j.id)
            self.active.remove(job)
            self.scheduler.finished(job.user, job.priority)
            self.scheduler.add_front(job, job.user, job.priority)
            job.position = None
            job.state = JobState.PAUSED
            job.pauses += 1
            self.preemptions += 1
            changed = True
        return changed

    def _admit(self):
        changed = self._preempt_background()
        while len(self.active) < self.running_max:
            picked = self.scheduler.pop()
            if picked is None:
                break
            job, _ = picked
            self._mark(job, "admitted")
            if job.seq is not None:  # a paused sequence resumes where it stopped
                job.state = JobState.DECODING if job.pending is not None else JobState.PREFILLING
                self.active.append(job)
                changed = True
                continue
            try:
                job.sampler = job.sampler or Sampler(self.vocab, job.params, job.grammar)
            except ValueError as exc:
                self.scheduler.finished(job.user, job.priority)
                job.state = JobState.FINISHED
                job.out.put(Finish("error", len(job.tokens), 0, error=str(exc)))
                continue
            job.seq, job.cached = self.table.take(job.user, job.tokens, job.public)
            job.n_past = job.cached
            job.kv = list(job.tokens[:job.cached])
            job.detok = Detokenizer(self.vocab, self.visible_special)
            job.stops = StopStrings(job.params.stop)
            job.state = JobState.PREFILLING  # take() always leaves the last prompt token to evaluate
            self.active.append(job)
            changed = True
        if changed:
            self._announce_positions()

    def _admissible(self, job):
        """Whether a waiting person's request would be admitted now (under the lock)."""
        return (job.priority == "interactive" and len(self.active) < self.running_max
                and self.scheduler.running[job.user] < self.scheduler.per_user)

    def _announce_positions(self):
        """Tell each waiting job how many are ahead of it, when that changed (under the lock)."""
        for ahead, job in enumerate(self.scheduler.order()):
            if job.position != ahead:
                job.position = ahead
                job.out.put(Queued(ahead))

    def _step(self, jobs):
        for job in [j for j in jobs if j.cancelled]:
            self._finish(job, "stopped")
        jobs = [j for j in jobs if not j.cancelled]
        if not jobs:
            return
        # Only while something decodes: an idle engine keeps its history.
        self.table.trim_idle(running_cells=sum(max(len(j.kv), len(j.tokens)) for j in jobs))
        plan = plan_step(jobs, step=self.steps, costs=self.costs,
                         batch_tokens=self.batch_tokens, chunk_tokens=self.chunk_tokens)
        rows, decoding = plan.rows, plan.decoding
        if not rows:
            return
        if not self.table.make_room(len(rows)):
            # The KV cache is full of running sequences: end the newest so the others can go on.
            newest = max(jobs, key=lambda j: j.id)
            self._fail(newest, "the server's context memory is full: try again in a moment")
            return
        self._fill_batch(rows)
        # A step of prompts alone (nobody streams) that costs more than a chunk is the one step
        # that can last long enough for a newcomer to notice.
        long_step = plan.is_long(self.costs, self.chunk_tokens) and self.interrupt.supported
        if long_step:
            with self.cv:
                if any(self._admissible(j) for j in self.scheduler.order()):
                    return  # someone arrived since admission: admit them first
                self.interrupt.clear()
                self.interruptible = {r[0] for r in rows}
        self.costs.start()
        rc = llama_cpp.llama_decode(self.ctx, self.llama_batch)
        if long_step:
            with self.cv:  # disarmed before the next step, which must never be ended
                self.interruptible = ()
                self.interrupt.clear()
        if rc == ABORTED and long_step:
            # llama.cpp dropped the step's KV entries; the prompts go on from where they were.
            self.interruptions += 1
            return
        self.steps += 1
        self.decoded += len(rows)
        self.last_fill = len(rows) / self.batch_tokens
        if rc != 0:
            for job in {id(r[0]): r[0] for r in rows}.values():
                self._fail(job, f"llama_decode failed ({rc})")
            return
        for i, (job, token, pos, wants_logits) in enumerate(rows):
            job.kv.append(token)
            if job.pending is None:
                job.n_past += 1
            if wants_logits:
                job.pending = None
                token = job.sampler.sample(self.ctx, i)
                if job.sampler.over_budget(job.produced + 1):
                    self._fail(job, GRAMMAR_TOO_COSTLY)
                    continue
                self._accept(job, token)
        self.costs.done(len(decoding), plan.prompt_rows(), *plan.cells())

    def _fill_batch(self, rows):
        b = self.llama_batch
        for i, (job, token, pos, wants_logits) in enumerate(rows):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = job.seq.seq_id
            b.logits[i] = wants_logits
        b.n_tokens = len(rows)

    def _mark(self, job, what):
        job.marks.setdefault(what, (self.steps, self.decoded))

    def _accept(self, job, token):
        self._mark(job, "first_token")
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            return self._finish(job, "stop")
        job.produced += 1
        piece = job.detok.piece(token)
        if not job.sampler.saw(piece):
            return self._finish(job, "stop")
        text, hit = job.stops.feed(piece)
        if text:
            job.out.put(Delta(text))
        if hit:
            return self._finish(job, "stop")
        if job.produced >= job.params.max_tokens:
            return self._finish(job, "length")
        job.pending = token
        job.state = JobState.DECODING

    def _retire(self, job):
        job.state = JobState.FINISHED
        with self.cv:
            if job in self.active:
                self.active.remove(job)
                self.scheduler.finished(job.user, job.priority)
            self.cv.notify()
        if job.sampler is not None:
            job.sampler.close()
            job.sampler = None

    def _finish(self, job, reason):
        self._mark(job, "finished")
        self._retire(job)
        self.table.release(job.seq, job.kv, spill=job.priority != "background")
        tail = job.stops.finish(job.detok.finish())
        if tail:
            job.out.put(Delta(tail))
        job.out.put(Finish(reason, len(job.tokens), job.produced, cached_tokens=job.cached))

    def _fail(self, job, error):
        self._retire(job)
        if job.seq is not None:
            self.table.discard(job.seq)
        job.out.put(Finish("error", len(job.tokens), job.produced, cached_tokens=job.cached, error=error))


def wait_chunks(engine, job, should_stop, poll=0.05):
    """The caller side of a job: yields its Queued/Delta chunks and the final Finish, cancelling
    the job when ``should_stop`` says so or when the consumer stops iterating. Text that piled up
    while the caller was busy comes out as one Delta (one wake-up per batch, not per token)."""
    finished = False
    try:
        while True:
            try:
                chunks = [job.out.get(timeout=poll)]
            except queue.Empty:
                if not job.cancelled and should_stop():
                    engine.cancel(job)
                continue
            while True:
                try:
                    chunks.append(job.out.get_nowait())
                except queue.Empty:
                    break
            for chunk in _merge_text(chunks):
                yield chunk
                if isinstance(chunk, Finish):
                    finished = True
                    return
            if not job.cancelled and should_stop():
                engine.cancel(job)
    finally:
        if not finished:
            engine.cancel(job)


def _merge_text(chunks):
    out = []
    for chunk in chunks:
        if isinstance(chunk, Delta) and out and isinstance(out[-1], Delta):
            out[-1] = Delta(out[-1].text + chunk.text)
        else:
            out.append(chunk)
    return out
