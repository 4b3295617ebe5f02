"""The OpenAI-compatible endpoints: /v1/models, /v1/chat/completions and /v1/completions.

A request becomes a conversation (source "api", with its key) whose answers are ordinary
Message rows on the same device queues, engine, plugins and fairness as the chat page's.
"""
import functools
import json
import logging
import time

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from chat.models import Conversation
from inference import toolcalls
from inference.embedded import get_worker
from inference.model_configs import all_models, get_model, model_features
from inference.structured import validation_error
from inference.workers import alive_workers
from usage.quotas import QuotaExceeded

from . import params, prompt_size
from .auth import authenticate_async
from .models import ApiKey
from .errors import ApiError, error_response, method_not_allowed, not_found
from .runner import Run, close_when_dropped, create_rows

logger = logging.getLogger(__name__)
FINISH = {"stop": "stop", "length": "length", "stopped": "stop", "tool_calls": "tool_calls"}


def api_view(*methods):
    """JSON errors for everything: bad method, ApiError, database trouble, any crash."""

    def wrap(view):
        @csrf_exempt
        @functools.wraps(view)
        async def inner(request, *args, **kwargs):
            if request.method not in methods:
                return method_not_allowed(request, methods)
            try:
                return await view(request, *args, **kwargs)
            except ApiError as exc:
                return exc.response()
            except DatabaseError:
                logger.exception("database error in %s", request.path)
                return error_response(503, "The database is busy: try again in a moment.", "server_error",
                                      code="database_unavailable", retry_after=1)
            except Exception:
                logger.exception("API request to %s failed", request.path)
                return error_response(500, "The server failed while handling this request.", "server_error")

        return inner

    return wrap


def _model_entry(model):
    try:
        features = model_features(model)
    except Exception:
        features = []
    return {"id": model.name, "object": "model", "created": 0, "owned_by": "smolsite",
            "smolsite": {"features": features, "thinking": "thinking" in features, "context_length": model.n_ctx,
                         "device": model.device, "backend": model.backend or "llama_cpp",
                         **({"served_by": model.options["served_by"]} if "served_by" in model.options else {})}}


@api_view("GET")
async def list_models(request):
    await authenticate_async(request)
    entries = await sync_to_async(lambda: [_model_entry(m) for m in all_models()])()
    return JsonResponse({"object": "list", "data": entries})


@api_view("GET")
async def retrieve_model(request, name):
    await authenticate_async(request)
    model = next((m for m in all_models() if m.name == name), None)
    if model is None:
        raise ApiError(404, f"The model '{name[:100]}' does not exist on this server.", param="model",
                       code="model_not_found")
    return JsonResponse(await sync_to_async(_model_entry)(model))


def _served(model_name):
    """Whether a live device worker holds the model (readiness, as /readyz knows it)."""
    if any(model_name in (w.get("models") or []) for w in alive_workers()):
        return True
    if not settings.REDIS_URL:
        # Embedded without a served start-up (tests, scripts): the first job starts the worker.
        return get_worker(get_model(model_name).device, start=False) is None
    return False


class Authority:
    """Whether the request's key still may be used (not revoked nor expired, its owner active):
    a request is authorised at its start, but an answer streams on for minutes, so the key is
    read again while it runs, at most once per RECHECK_SECONDS (one small query: with many
    streams at once, once a second each was a tenth of the web process's CPU)."""

    RECHECK_SECONDS = 3.0

    def __init__(self, key):
        self.key_id = key.pk
        self.checked = time.monotonic()

    async def revoked(self):
        if time.monotonic() - self.checked < self.RECHECK_SECONDS:
            return None
        self.checked = time.monotonic()
        if await database_sync_to_async(ApiKey.objects.usable().filter(pk=self.key_id).exists)():
            return None
        return ApiError(401, "This API key was revoked, has expired or its account was deactivated while the "
                             "answer was generating: the answer was stopped.", code="invalid_api_key")


def _quota_error(exc):
    kind = {"tokens": ("insufficient_quota", "insufficient_quota")}.get(exc.kind, ("requests", "rate_limit_exceeded"))
    return ApiError(429, str(exc), kind[0], None, kind[1], retry_after=exc.retry_after)


def generation_error(row):
    """The ApiError for an answer that ended in error (or was interrupted)."""
    text = row.get("error") or "The generation failed."
    if text.startswith("the prompt is "):
        return ApiError(400, f"This model's context is too small for these messages: {text}.", param="messages",
                        code="context_length_exceeded")
    if "grammar" in text.lower():
        return ApiError(400, f"The structured output could not be enforced: {text}.", param="response_format",
                        code="unsupported_schema")
    if row.get("status") == "interrupted":
        return ApiError(503, f"The device worker stopped before the answer was finished: {text}", "server_error",
                        code="worker_lost", retry_after=1)
    return ApiError(503, f"The generation failed: {text}", "server_error", code="generation_failed", retry_after=1)


def choice_error(plan, choice):
    """None, or the ApiError a finished choice stands for (an error, or an answer that does not
    follow its response_format, which the grammar should make impossible)."""
    row = choice.row
    if row["status"] in ("error", "interrupted"):
        return generation_error(row)
    if plan.tools and row["status"] == "done":
        problem = _bad_call(plan, row["tool_calls"])
        if problem:
            logger.error("tool call of message %s failed validation: %s", choice.message_id, problem)
            return ApiError(503, f"The tool call could not be guaranteed to be well formed: {problem}",
                            "server_error", "tools", "invalid_tool_call", retry_after=1)
    if (plan.schema is not None or plan.json_mode) and row["finish_reason"] == "length":
        return None  # cut by max_tokens: finish_reason "length" says so
    if (plan.schema is not None or plan.json_mode) and row["status"] == "done":
        problem = validation_error(row["content"], plan.schema)
        if problem:
            logger.error("structured output of message %s failed validation: %s", choice.message_id, problem)
            return ApiError(503, f"The answer could not be guaranteed to follow the response format: {problem}",
                            "server_error", "response_format", "invalid_structured_output", retry_after=1)
    return None


def _bad_call(plan, calls):
    """Why one of ``calls`` is not a call to one of the request's tools with valid arguments
    (the grammar makes this impossible; this is the second guard), or None."""
    by_name = {t["name"]: t for t in plan.tools}
    for call in calls:
        tool = by_name.get(call["name"])
        if tool is None:
            return f"the model called '{call['name']}', which is not one of the tools"
        problem = validation_error(call["arguments"], tool["parameters"])
        if problem:
            return f"the arguments of '{call['name']}': {problem.replace('the answer', 'they')}"
    return None


def _tool_calls(calls):
    return [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls]


def _usage(choices):
    prompt = sum(c.row.get("prompt_tokens") or 0 for c in choices)
    completion = sum(c.row.get("completion_tokens") or 0 for c in choices)
    cached = sum(c.row.get("cached_tokens") or 0 for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _finish_reason(choice):
    return FINISH.get(choice.row.get("finish_reason") or "", "stop")


def _read(request, parse):
    """The checked plan and its prompts' sizes (api.prompt_size), before any row. Runs in a
    worker thread: converting a JSON Schema to a grammar and counting a long prompt's tokens
    can take long, and on the event loop they would hold up every other request."""
    plan = params.check_plan(parse(params.parse_body(request)))
    return plan, prompt_size.check(plan)


async def _start(request, parse):
    key = await authenticate_async(request)
    plan, prompt_tokens = await sync_to_async(_read, thread_sensitive=False)(request, parse)
    if not await sync_to_async(_served)(plan.model):
        raise ApiError(503, f"No device worker is serving the model '{plan.model}' right now: try again later.",
                       "server_error", "model", "model_not_available", retry_after=5)
    try:
        conversation_id, ids = await database_sync_to_async(create_rows)(plan, key, prompt_tokens=prompt_tokens)
    except QuotaExceeded as exc:
        raise _quota_error(exc) from None
    return plan, Run(conversation_id, ids, plan.model), Authority(key)


async def _serve(request, parse, shape):
    plan, run, authority = await _start(request, parse)
    handed_over = False
    try:
        await run.start()
        updates = run.updates()
        if not plan.stream:
            async for _ in updates:  # until every choice is done
                problem = await authority.revoked()
                if problem is not None:
                    raise problem  # closing the run (below) stops the answers; they keep their text
            for choice in run.choices:
                problem = choice_error(plan, choice)
                if problem:
                    await _discard_refused(run, problem)
                    raise problem
            return JsonResponse(shape.complete(plan, run))
        early = await until_admitted(updates)
        if run.finished:
            for choice in run.choices:
                problem = choice_error(plan, choice)
                if problem and choice.row["status"] in ("error", "interrupted"):
                    await _discard_refused(run, problem)
                    raise problem
        response = sse_response(_sse(plan, run, early, updates, shape, authority), run)
        handed_over = True
        return response
    finally:
        if not handed_over:
            await run.close()


async def _discard_refused(run, problem):
    """A request the worker found too long for the context (api.prompt_size refuses most before
    any row; this is the rest, pushed over by the template's own tokens) leaves no conversation
    behind: the client got a 400, as if it had been refused at once."""
    if problem.code == "context_length_exceeded":
        await database_sync_to_async(Conversation.objects.filter(pk=run.conversation_id).delete)()


def _data(payload):
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


async def until_admitted(updates):
    """The updates a streaming answer reads before its status line: it waits until the engine has
    the request (its prompt fitted the context: a queue place) or the first token, so a prompt
    longer than the context is a plain 400, as in chat."""
    early = []
    async for item in updates:
        early.append(item)
        if item[0] in ("text", "reasoning", "tool", "queue"):
            break
    return early


async def stream_items(early, updates):
    """The run's updates a streaming response sends: those read before the status line went
    out (``early``), then the rest as they come."""
    for item in early:
        yield item
    async for item in updates:
        yield item


def sse_response(events, run):
    """A server-sent events response streaming ``events``; the run is closed when it is dropped."""
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # proxies must pass each event on at once
    close_when_dropped(response, run)
    return response


def sse_comment(kind, piece):
    """An SSE comment (clients ignore them) for a "queue" or "idle" update: where the request
    waits, or a keep-alive."""
    return (f": {piece} ahead in the queue\n\n" if kind == "queue" else ": waiting\n\n").encode()


async def _sse(plan, run, early, updates, shape, authority):
    """Server-sent events; the generator is cancelled when the client disconnects, and closing
    the run then stops every answer still generating. A key revoked mid-stream ends the stream
    with an error event (OpenAI's error shape) and stops the answers, which keep their text."""
    try:
        for chunk in shape.opening(plan, run):
            yield _data(chunk)
        async for kind, choice, piece in stream_items(early, updates):
            revoked = await authority.revoked()
            if revoked is not None:
                yield _data(revoked.payload())
                return
            if kind in ("queue", "idle"):
                yield sse_comment(kind, piece)
                continue
            if kind in ("text", "reasoning", "tool"):
                for chunk in shape.deltas(plan, run, choice, kind, piece):
                    yield _data(chunk)
                continue
            problem = choice_error(plan, choice)
            if problem is not None:
                yield _data(problem.payload())
                return
            for chunk in shape.closing(plan, run, choice):
                yield _data(chunk)
        if plan.include_usage:
            yield _data({**shape.base(plan, run), "choices": [], "usage": _usage(run.choices)})
        yield b"data: [DONE]\n\n"
    finally:
        await run.close()


class ChatShape:
    @staticmethod
    def base(plan, run):
        return {"id": f"chatcmpl-{run.choices[0].message_id}", "object": "chat.completion.chunk",
                "created": run.created, "model": plan.model, "system_fingerprint": "smolsite"}

    @staticmethod
    def complete(plan, run):
        choices = []
        for c in run.choices:
            message = {"role": "assistant", "content": c.row.get("content", ""), "refusal": None}
            if c.row.get("reasoning"):
                message["reasoning_content"] = c.row["reasoning"]
            if c.row.get("tool_calls"):
                message["tool_calls"] = _tool_calls(c.row["tool_calls"])
                message["content"] = message["content"] or None
            choices.append({"index": c.index, "message": message, "logprobs": None,
                            "finish_reason": _finish_reason(c)})
        return {"id": f"chatcmpl-{run.choices[0].message_id}", "object": "chat.completion", "created": run.created,
                "model": plan.model, "system_fingerprint": "smolsite", "choices": choices,
                "usage": _usage(run.choices)}

    @classmethod
    def opening(cls, plan, run):
        for c in run.choices:
            yield {**cls.base(plan, run), "choices": [{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                                       "logprobs": None, "finish_reason": None}]}

    @classmethod
    def _chunk(cls, plan, run, choice, delta, finish=None):
        return {**cls.base(plan, run), "choices": [{"index": choice.index, "delta": delta, "logprobs": None,
                                                     "finish_reason": finish}]}

    @classmethod
    def deltas(cls, plan, run, choice, kind, piece):
        if kind == "text":
            yield cls._chunk(plan, run, choice, {"content": piece})
        elif kind == "reasoning":
            yield cls._chunk(plan, run, choice, {"reasoning_content": piece})
        else:
            if choice.calls is None:
                choice.calls = toolcalls.CallStream()
            for delta in choice.calls.feed(piece):
                yield cls._chunk(plan, run, choice, {"tool_calls": [cls._call_delta(choice, *delta)]})

    @staticmethod
    def _call_delta(choice, index, name, fragment):
        """OpenAI's shape: id, type and name once, in the call's first delta; then arguments."""
        if name is not None:
            return {"index": index, "id": toolcalls.call_id(choice.message_id, index), "type": "function",
                    "function": {"name": name, "arguments": fragment}}
        return {"index": index, "function": {"arguments": fragment}}

    @classmethod
    def closing(cls, plan, run, choice):
        # Whatever of the saved calls did not stream (a lost flush of events) goes out first.
        stream = choice.calls or toolcalls.CallStream()
        for index, call in enumerate(choice.row.get("tool_calls") or []):
            sent = stream.sent_for(index)
            if sent is None:
                yield cls._chunk(plan, run, choice, {"tool_calls": [cls._call_delta(choice, index, call["name"], "")]})
                sent = ""
            if call["arguments"].startswith(sent) and len(call["arguments"]) > len(sent):
                yield cls._chunk(plan, run, choice, {"tool_calls": [
                    cls._call_delta(choice, index, None, call["arguments"][len(sent):])]})
        yield cls._chunk(plan, run, choice, {}, _finish_reason(choice))


class CompletionShape:
    @staticmethod
    def base(plan, run):
        return {"id": f"cmpl-{run.choices[0].message_id}", "object": "text_completion", "created": run.created,
                "model": plan.model, "system_fingerprint": "smolsite"}

    @staticmethod
    def _prompt(plan, choice):
        return plan.prompts[choice.index // plan.n]

    @classmethod
    def complete(cls, plan, run):
        choices = []
        for c in run.choices:
            # Raw completions keep whatever the model wrote, reasoning tags' contents included.
            text = c.row.get("reasoning", "") + c.row.get("content", "")
            if plan.echo:
                text = cls._prompt(plan, c) + text
            choices.append({"index": c.index, "text": text, "logprobs": None, "finish_reason": _finish_reason(c)})
        return {**cls.base(plan, run), "choices": choices, "usage": _usage(run.choices)}

    @classmethod
    def opening(cls, plan, run):
        if plan.echo:
            for c in run.choices:
                yield cls._chunk(plan, run, c, cls._prompt(plan, c), None)

    @classmethod
    def _chunk(cls, plan, run, choice, text, finish):
        return {**cls.base(plan, run), "choices": [{"index": choice.index, "text": text, "logprobs": None,
                                                     "finish_reason": finish}]}

    @classmethod
    def deltas(cls, plan, run, choice, kind, piece):
        yield cls._chunk(plan, run, choice, piece, None)

    @classmethod
    def closing(cls, plan, run, choice):
        yield cls._chunk(plan, run, choice, "", _finish_reason(choice))


@api_view("POST")
async def chat_completions(request):
    return await _serve(request, params.parse_chat, ChatShape)


@api_view("POST")
async def completions(request):
    return await _serve(request, params.parse_completion, CompletionShape)


@csrf_exempt
async def unknown(request, rest=""):
    return not_found(request)
