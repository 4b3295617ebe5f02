"""The generation service: runs one request on a loaded backend, applies plugin stream
filters, publishes numbered events in flushes (inference.publish) and saves progress through a job store.

Both the Celery task (scaled out) and the in-process worker (embedded) call ``run_job``.
"""
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

from django.conf import settings
from django.utils.module_loading import import_string

from . import toolcalls
from .backends import BackendError, Finish, PromptTooLong, Queued
from .registry import get_registry
from .model_configs import model_info
from .plugins import get_plugin_manager
from .publish import Publisher
from .stop import StopChecker, clear_stop

logger = logging.getLogger(__name__)

SAVE_SECONDS = 1.0  # partial text reaches the database at least this often
# The final save is retried (a database restarting, a lock held too long) before giving up.
FINISH_RETRY_SECONDS = (0.5, 1, 2, 4, 8)


@dataclass
class GenerationResult:
    status: str = "done"  # done | stopped | error
    error: str = ""
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    ttft: Optional[float] = None  # seconds from start of the job to the first token
    tokens_per_second: Optional[float] = None
    duration: float = 0.0
    reasoning_seconds: Optional[float] = None
    model: str = ""
    backend: str = ""
    dropped_turns: int = 0
    text: str = field(default="", repr=False)
    reasoning: str = field(default="", repr=False)
    # The calls the model wrote, complete ones only: [{"name", "arguments"}] (inference.toolcalls).
    tool_calls: list = field(default_factory=list, repr=False)
    seq: int = 0

    def stats(self):
        """What browsers are told about a finished answer (not which tokens were cached: that
        would tell one user about another's earlier prompts)."""
        data = asdict(self)
        for private in ("text", "reasoning", "tool_calls", "cached_tokens"):
            data.pop(private)
        return data


class JobStore:
    """Where requests come from and results go (chat.store.MessageStore in this project)."""

    def claim(self, job_id, worker_id):  # -> GenerationRequest | None
        raise NotImplementedError

    def save_progress(self, job_id, text, reasoning, seq):
        raise NotImplementedError

    def finish(self, job_id, result):
        raise NotImplementedError

    def after_finish(self, job_id, result, worker_id=""):
        """Called on the worker's thread once the job's result is saved and published (the chat's
        tools run here, never on the engine's thread): nothing by default."""


def get_store():
    return import_string(getattr(settings, "SMOLSITE_JOB_STORE", "chat.store.MessageStore"))()


def render_prompt(backend, request):
    """The prompt text: the raw prompt when the request has one, else the model's chat template."""
    if request.raw_prompt is not None:
        return request.raw_prompt
    return backend.render_prompt(request)


def fit_prompt(backend, request):
    """Render the prompt, leaving out the oldest turns when the history is longer than the
    context can hold next to the answer; the count left out is kept on the request.

    Fewer dropped turns never makes the prompt shorter, so the smallest drop that fits is found
    by bisection: about log2(turns) renders, not one per dropped turn (a long history used to
    hold a worker for minutes)."""
    n_ctx = backend.context_size
    reserve = max(1, min(request.params.max_tokens, n_ctx // 4))
    messages = list(request.messages)

    def attempt(drop):
        request.messages = messages[drop:]
        prompt = render_prompt(backend, request)
        return prompt, backend.count_tokens(prompt)

    prompt, tokens = attempt(0)
    if tokens + reserve > n_ctx and (not request.truncate_history or request.raw_prompt is not None):
        raise PromptTooLong(tokens, n_ctx - reserve)
    if tokens + reserve > n_ctx:
        # A kept history starts with a user turn; the last message always stays.
        cuts = [i for i in range(1, len(messages)) if messages[i]["role"] == "user"]
        if not cuts:
            cuts = [len(messages) - 1] if len(messages) > 1 else []
        lo, hi, best = 0, len(cuts) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            p, t = attempt(cuts[mid])
            if t + reserve <= n_ctx:
                best, hi = (cuts[mid], p, t), mid - 1
            else:
                lo = mid + 1
        if best is None:
            request.messages = messages[cuts[-1]:] if cuts else messages
            last = attempt(cuts[-1])[1] if cuts else tokens
            raise PromptTooLong(last, n_ctx - reserve)
        drop, prompt, tokens = best
        request.messages = messages[drop:]
        request.dropped_turns = drop
    request.params.max_tokens = max(1, min(request.params.max_tokens, n_ctx - tokens))
    return prompt, tokens


class _FilterChain:
    def __init__(self, filters):
        self.filters = filters

    def feed(self, text):
        items = [("text", text)]
        for f in self.filters:
            items = self._through(f, items)
        return items

    def finish(self):
        items = []
        for f in self.filters:
            items = self._through(f, items) + list(f.finish())
        return items

    @staticmethod
    def _through(f, items):
        out = []
        for kind, text in items:
            out.extend(f.feed(text) if kind == "text" else [(kind, text)])
        return out


class GenerationService:
    def __init__(self, registry=None, store=None, publisher_factory=Publisher):
        self.registry = registry or get_registry()
        self.store = store
        self.publisher_factory = publisher_factory

    def run(self, request):
        pm = get_plugin_manager()
        pub = self.publisher_factory(request.group, request.id)
        should_stop = StopChecker(request.id)
        result = GenerationResult(model=request.model)
        text, reasoning, tool_text = [], [], []
        started = time.monotonic()
        first_token_at = last_save = None
        reasoning_started = reasoning_ended = None
        pub.emit("start", model=request.model)
        pub.flush()
        try:
            pm.hook.generation_started(request=request)
            if should_stop():
                result.status, result.finish_reason = "stopped", "stopped"
            else:
                backend = self.registry.backend(request.model)
                result.backend = backend.name
                info = model_info(backend.model)
                pm.hook.prepare_request(request=request, model=backend.model, info=info)
                prompt, result.prompt_tokens = fit_prompt(backend, request)
                result.dropped_turns = request.dropped_turns
                if request.dropped_turns:
                    pub.emit("notice", dropped_turns=request.dropped_turns)
                filters = [f for f in pm.hook.register_stream_filters(
                    request=request, model=backend.model, info=info) if f is not None]
                if request.tools:  # after the reasoning filter: calls are read from the answer only
                    filters.append(toolcalls.CallSplitter())
                chain = _FilterChain(filters)
                for chunk in backend.submit(request, prompt, should_stop):
                    if isinstance(chunk, Queued):
                        # Tabs show "N requests ahead of you" until the first token.
                        pub.emit("queue", ahead=chunk.ahead)
                        pub.flush()
                        continue
                    if isinstance(chunk, Finish):
                        result.finish_reason = chunk.reason
                        result.completion_tokens = chunk.completion_tokens
                        result.prompt_tokens = chunk.prompt_tokens or result.prompt_tokens
                        result.cached_tokens = chunk.cached_tokens
                        result.backend = chunk.backend or result.backend
                        if chunk.reason == "stopped":
                            result.status = "stopped"
                        elif chunk.reason in ("error", "interrupted"):
                            result.status, result.error = chunk.reason, chunk.error or "the backend failed"
                        continue
                    if first_token_at is None:
                        first_token_at = time.monotonic()
                        last_save = first_token_at
                    for kind, piece in chain.feed(chunk.text):
                        if not piece:
                            continue
                        if kind == "reasoning":
                            reasoning.append(piece)
                            reasoning_started = reasoning_started or time.monotonic()
                        elif kind == "tool":
                            tool_text.append(piece)
                        else:
                            text.append(piece)
                            if reasoning_started and not reasoning_ended:
                                reasoning_ended = time.monotonic()
                        pub.emit(kind, piece)
                    # The first text goes out at once (time to first token); later text in flushes.
                    if pub.due():
                        seq = pub.flush()
                        now = time.monotonic()
                        if now - last_save >= SAVE_SECONDS:
                            last_save = now
                            self._save_progress(request.id, "".join(text), "".join(reasoning), seq)
                for kind, piece in chain.finish():
                    if piece:
                        {"reasoning": reasoning, "tool": tool_text}.get(kind, text).append(piece)
                        pub.emit(kind, piece)
                result.tool_calls = toolcalls.parse("".join(tool_text))
                if result.tool_calls and result.finish_reason == "stop":
                    result.finish_reason = "tool_calls"
        except (PromptTooLong, BackendError) as exc:
            result.status, result.error = "error", str(exc)
        except Exception as exc:  # anything else still ends the message in a visible state
            logger.exception("generation %s failed", request.id)
            result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            ended = time.monotonic()
            result.duration = ended - started
            if first_token_at is not None:
                result.ttft = first_token_at - started
                if result.completion_tokens > 1 and ended > first_token_at:
                    result.tokens_per_second = (result.completion_tokens - 1) / (ended - first_token_at)
            if reasoning_started:
                result.reasoning_seconds = (reasoning_ended or ended) - reasoning_started
            result.text, result.reasoning = "".join(text), "".join(reasoning)
            result.seq = pub.flush()
            self._finish(request, result, pub)
            clear_stop(request.id)
            pm.hook.generation_finished(request=request, result=result)
        return result

    def _save_progress(self, job_id, text, reasoning, seq):
        # A progress save that fails (the database restarting) does not end the answer: the tabs
        # still get every token, the next save catches up and the final save is retried.
        try:
            self.store.save_progress(job_id, text, reasoning, seq)
        except Exception as exc:
            logger.warning("could not save the progress of %s (%s: %s); generating on", job_id,
                           type(exc).__name__, exc)

    def _finish(self, request, result, pub):
        saved = False
        for attempt in range(len(FINISH_RETRY_SECONDS) + 1):
            try:
                saved = self.store.finish(request.id, result) is not False
                break
            except Exception:
                logger.exception("could not save the result of %s (try %d)", request.id, attempt + 1)
                if attempt < len(FINISH_RETRY_SECONDS):
                    time.sleep(FINISH_RETRY_SECONDS[attempt])
        # Persisted before "done" goes out, so a client that reloads on "done" sees the final row;
        # a row not saved (or already ended by the reaper, which told the tabs) gets no "done".
        if saved:
            pub.emit("done", status=result.status, error=result.error, stats=result.stats())
        else:
            logger.warning("generation %s ended %s but its row was not saved by this worker", request.id,
                           result.status)
        pub.close()


def run_job(job_id, worker_id=""):
    store = get_store()
    request = store.claim(job_id, worker_id)
    if request is None:
        logger.info("job %s is gone or already finished; skipping", job_id)
        return None
    result = GenerationService(store=store).run(request)
    try:
        store.after_finish(job_id, result, worker_id)
    except Exception:
        logger.exception("after job %s finished", job_id)
    return result
