"""OpenAI's Responses API: POST /v1/responses and the stored responses' endpoints.

A response runs exactly as a chat completion does (the same plan, rows, runner, quotas, tools
and structured output; api.response_params says how a request becomes a plan) and is kept as a
conversation its owner sees and can continue in the browser (api.response_store). Background
responses are rows at the batch priority, answered while nobody waits on them.
"""
import asyncio
import json
import time

from asgiref.sync import sync_to_async
from django.http import JsonResponse

from chat import generation
from chat.generation_options import GenerationOptions
from chat.models import Message
from usage.quotas import QuotaExceeded

from . import params
from . import response_params as rp
from . import response_store as store
from .auth import authenticate_async
from .errors import ApiError, invalid
from .response_shape import EventStream, response_object
from .runner import Run, stop_messages
from .views import (Authority, _quota_error, _served, api_view, choice_error, sse_comment, sse_response, stream_items,
                    until_admitted)

CANCEL_WAIT_SECONDS = 10  # a cancelled answer's worker ends it at its next step


def _read(data, previous, history):
    """The checked request and its prompt's size, off the event loop (grammars and token counts
    take long)."""
    req = rp.parse(data, previous, history)
    return req, rp.measure(req.plan)


def _object(found, meta=None, error=None):
    """The response object of a row from api.response_store.row (with a tokenizer: in a thread)."""
    meta = meta if meta is not None else GenerationOptions.from_dict(found["options"]).response
    model = found["model_name"]
    finished = found.get("finished_at")
    return response_object(found["id"], model, int(found["created_at"].timestamp()), found, meta,
                           reasoning_tokens=store.reasoning_tokens(model, found), error=error,
                           completed_at=int(finished.timestamp()) if finished else None)


async def _object_of(message_id, meta=None, error=None):
    found = await sync_to_async(store.row)(message_id)
    if found is None:
        raise rp.not_found(rp.response_id(message_id))
    return await sync_to_async(_object, thread_sensitive=False)(found, meta, error)


@api_view("POST")
async def create(request):
    key = await authenticate_async(request)
    data = await sync_to_async(params.parse_body, thread_sensitive=False)(request)
    previous, history = await sync_to_async(rp.load_previous)(data, key.user_id)
    req, prompt_tokens = await sync_to_async(_read, thread_sensitive=False)(data, previous, history)
    plan = req.plan
    if not await sync_to_async(_served)(plan.model):
        raise ApiError(503, f"No device worker is serving the model '{plan.model}' right now: try again later.",
                       "server_error", "model", "model_not_available", retry_after=5)
    try:
        conversation_id, mid, affinity = await sync_to_async(store.create)(req, key, prompt_tokens)
    except QuotaExceeded as exc:
        raise _quota_error(exc) from None
    if req.background:
        return JsonResponse(await _queue_background(mid, plan.model, affinity))
    run = Run(conversation_id, [mid], plan.model, affinity)
    authority = Authority(key)
    handed_over = False
    try:
        await run.start()
        updates = run.updates()
        if not plan.stream:
            async for _ in updates:
                problem = await authority.revoked()
                if problem is not None:
                    raise problem  # closing the run (below) stops the answer; it keeps its text
            problem = choice_error(plan, run.choices[0])
            if problem:
                await _discard_refused(req, mid, problem)
                raise rp.renamed(problem, [], 0)
            return JsonResponse(await _object_of(mid, req.meta))
        early = await until_admitted(updates)
        if run.finished:
            problem = choice_error(plan, run.choices[0])
            if problem and run.choices[0].row["status"] in ("error", "interrupted"):
                await _discard_refused(req, mid, problem)
                raise rp.renamed(problem, [], 0)
        response = sse_response(_events(req, run, early, updates, authority), run)
        handed_over = True
        return response
    finally:
        if not handed_over:
            await run.close()
            if not req.store:
                await sync_to_async(store.delete)(mid)


async def _discard_refused(req, mid, problem):
    """A request the worker found too long for the context leaves no rows, as if refused at once
    (api.views._discard_refused; here only this request's rows: a chain stays)."""
    if problem.code == "context_length_exceeded" and req.store:
        await sync_to_async(store.delete)(mid)


async def _queue_background(mid, model, affinity):
    """Queue a background answer and return its response (queued), without waiting for it."""
    await generation.start(mid, model, affinity)
    return await _object_of(mid)


def _sse(event):
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


async def _events(req, run, early, updates, authority):
    """The response's events (api.response_shape.EventStream) as server-sent events. The generator
    is cancelled when the client disconnects; closing the run then stops the answer. A key revoked
    mid-stream ends it with an error event."""
    choice = run.choices[0]
    stream = EventStream(choice.message_id)
    try:
        # Empty, whatever the worker saved already: the output arrives as events.
        snapshot = response_object(choice.message_id, req.plan.model, run.created, {"status": "streaming"}, req.meta)
        for event in stream.opening(snapshot):
            yield _sse(event)
        async for kind, _, piece in stream_items(early, updates):
            revoked = await authority.revoked()
            if revoked is not None:
                yield _sse(stream.event("error", code=revoked.code, message=revoked.message, param=None,
                                        error=revoked.payload()["error"]))
                return
            if kind in ("queue", "idle"):
                yield sse_comment(kind, piece)
            elif kind in ("text", "reasoning", "tool"):
                for event in stream.feed(kind, piece):
                    yield _sse(event)
        problem = choice_error(req.plan, choice)
        error = None
        if problem is not None:
            problem = rp.renamed(problem, [], 0)
            error = {"code": "server_error" if problem.status >= 500 else "invalid_prompt", "message": problem.message}
        final = await _object_of(choice.message_id, req.meta, error)
        if error is not None:
            final = {**final, "status": "failed", "error": error, "usage": final["usage"]}
        found = await sync_to_async(store.row)(choice.message_id)
        for event in stream.closing(found or choice.row, final):
            yield _sse(event)
    finally:
        await run.close()
        if not req.store:
            await sync_to_async(store.delete)(choice.message_id)


@api_view("GET", "DELETE")
async def response(request, rid):
    key = await authenticate_async(request)
    if request.method == "DELETE":
        found = await _owned(key, rid)
        if found["status"] in Message.ACTIVE:
            await stop_messages([found["id"]])
        await sync_to_async(store.delete)(found["id"])
        return JsonResponse({"id": rid, "object": "response", "deleted": True})
    if request.GET.get("stream") in ("true", "1"):
        raise invalid("Streaming a stored response again is not supported by this server: GET it without "
                      "'stream'.", "stream", "unsupported_parameter")
    found = await _owned(key, rid)
    if found["status"] == Message.Status.INTERRUPTED and await sync_to_async(store.revive)(found["id"]):
        found = await sync_to_async(store.row)(found["id"])
    return JsonResponse(await sync_to_async(_object, thread_sensitive=False)(found))


async def _owned(key, rid):
    """The key's user's stored response ``rid``; anyone else's is a 404, as a missing one."""
    found = await sync_to_async(store.load)(key.user_id, rid)
    if found is None:
        raise rp.not_found(rid)
    return found


@api_view("POST")
async def cancel(request, rid):
    key = await authenticate_async(request)
    found = await _owned(key, rid)
    if not GenerationOptions.from_dict(found["options"]).response.get("background"):
        raise invalid("Only responses created with 'background': true can be cancelled.", None,
                      "not_background")
    if found["status"] in Message.ACTIVE:
        await stop_messages([found["id"]])
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while found["status"] in Message.ACTIVE and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            found = await sync_to_async(store.row)(found["id"])
    return JsonResponse(await sync_to_async(_object, thread_sensitive=False)(found))


@api_view("GET")
async def input_items(request, rid):
    key = await authenticate_async(request)
    found = await _owned(key, rid)
    limit = request.GET.get("limit", "20")
    if not limit.isdigit() or not 1 <= int(limit) <= 100:
        raise invalid("'limit' must be an integer from 1 to 100.", "limit")
    order = request.GET.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid("'order' must be asc or desc.", "order")
    items, more = store.input_items(found, int(limit), order, request.GET.get("after"))
    return JsonResponse({"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
                         "last_id": items[-1]["id"] if items else None, "has_more": more})
