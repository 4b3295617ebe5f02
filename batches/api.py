"""OpenAI's Files and Batches endpoints (the parts a batch needs), with API keys and errors in
OpenAI's shape: /v1/files and /v1/batches. Everything is the key owner's own: another user's
file or batch is a 404, as if it did not exist."""
import asyncio
import json
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.db import transaction
from django.http import HttpResponse, JsonResponse
from django.utils.http import content_disposition_header

from api.errors import ApiError, invalid
from api.auth import authenticate_async
from api.params import parse_body
from api.views import api_view
from inference.publish import remember_server_loop

from . import service, uploads
from .models import Batch, BatchFile

MAX_LIST = 100


def _file_of(user_id, file_id):
    found = BatchFile.objects.filter(pk=file_id, owner_id=user_id).first()
    if found is None:
        raise ApiError(404, f"No such File object: {file_id[:100]}", param="id", code="file_not_found")
    return found


def _batch_of(user_id, batch_id):
    found = Batch.objects.filter(pk=batch_id, owner_id=user_id).first()
    if found is None:
        raise ApiError(404, f"No such batch: {batch_id[:100]}", param="id", code="batch_not_found")
    return found


def _limit(request):
    raw = request.GET.get("limit", "20")
    try:
        limit = int(raw)
    except ValueError:
        raise invalid("'limit' must be an integer from 1 to 100.", "limit") from None
    if not 1 <= limit <= MAX_LIST:
        raise invalid("'limit' must be an integer from 1 to 100.", "limit")
    return limit


def _page(queryset, request, after_model):
    """Newest first; ``after`` is the id of the last item of the previous page."""
    limit = _limit(request)
    after = request.GET.get("after")
    if after:
        anchor = queryset.filter(pk=after).first()
        if anchor is None:
            raise invalid(f"'after' names no object of yours: {after[:100]}.", "after")
        queryset = queryset.filter(created_at__lte=anchor.created_at).exclude(
            created_at=anchor.created_at, pk__gte=anchor.pk)
    items = list(queryset.order_by("-created_at", "-pk")[:limit + 1])
    data = [i.as_api() for i in items[:limit]]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(items) > limit}


def _upload(request, key):
    uploads.declared_length(request)  # a declared length over the limit: refused before reading
    cap = uploads.SizeCap(request)
    request.upload_handlers.insert(0, cap)  # and whatever was declared, the read stops past the limit
    try:
        files, purpose = request.FILES, request.POST.get("purpose")
    except Exception:
        raise ApiError(413, "The upload is too large or malformed.", code="request_too_large") from None
    if cap.exceeded:
        raise uploads.too_large()
    upload = files.get("file")
    if upload is None:
        raise invalid("'file' is required (multipart/form-data).", "file")
    if purpose != "batch":
        raise invalid("'purpose' must be 'batch' (the only purpose this server stores files for).", "purpose")
    if upload.size > uploads.max_file_bytes():
        raise uploads.too_large(upload.size)
    lifetime = _expires_after(request.POST)
    with transaction.atomic():
        uploads.check_user_cap(key.user, upload.size)
        stored = service.store_file(key.user, upload.name or "input.jsonl", upload.read())
        if lifetime is not None:
            stored.expires_at = stored.created_at + lifetime
            BatchFile.objects.filter(pk=stored.pk).update(expires_at=stored.expires_at)
    return stored.as_api()


MIN_EXPIRY, MAX_EXPIRY = 3600, 30 * 86400  # OpenAI's bounds for expires_after.seconds


def _expires_after(form):
    """OpenAI's ``expires_after[anchor]=created_at`` and ``expires_after[seconds]=N`` form fields
    (or one JSON ``expires_after`` field): the file's lifetime; None (absent): the default expiry."""
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if "expires_after" in form:
        try:
            value = json.loads(form["expires_after"])
            anchor, seconds = value.get("anchor"), value.get("seconds")
        except (ValueError, AttributeError):
            raise invalid("'expires_after' must be {\"anchor\": \"created_at\", \"seconds\": N}.",
                          "expires_after") from None
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise invalid("'expires_after[anchor]' must be 'created_at'.", "expires_after.anchor")
    try:
        seconds = int(seconds)
    except (TypeError, ValueError):
        seconds = None
    if seconds is None or not MIN_EXPIRY <= seconds <= MAX_EXPIRY:
        raise invalid(f"'expires_after[seconds]' must be an integer from {MIN_EXPIRY} to {MAX_EXPIRY}.",
                      "expires_after.seconds")
    return timedelta(seconds=seconds)


@api_view("GET", "POST")
async def files(request):
    key = await authenticate_async(request)
    if request.method == "POST":
        return JsonResponse(await sync_to_async(_upload)(request, key))
    queryset = BatchFile.objects.filter(owner_id=key.user_id)
    purpose = request.GET.get("purpose")
    if purpose:
        queryset = queryset.filter(purpose=purpose)
    return JsonResponse(await sync_to_async(_page)(queryset, request, BatchFile))


@api_view("GET", "DELETE")
async def file_detail(request, file_id):
    key = await authenticate_async(request)

    def work():
        found = _file_of(key.user_id, file_id)
        if request.method == "DELETE":
            found.delete()
            return {"id": file_id, "object": "file", "deleted": True}
        return found.as_api()

    return JsonResponse(await sync_to_async(work)())


@api_view("GET")
async def file_content(request, file_id):
    key = await authenticate_async(request)
    found = await sync_to_async(_file_of)(key.user_id, file_id)
    response = HttpResponse(bytes(found.data), content_type="application/jsonl")
    response["Content-Disposition"] = content_disposition_header(True, found.filename)
    return response


def _create_batch(data, key, input_file, checked):
    try:
        batch = service.create_batch(key.user, input_file, data["endpoint"], data.get("completion_window"),
                                     data.get("metadata"), api_key=key, checked=checked)
    except service.BatchRefused as exc:
        kind = "rate_limit_exceeded" if exc.status == 429 else "invalid_request_error"
        raise ApiError(exc.status, exc.message, kind, exc.param, exc.code) from None
    return batch.as_api()


def _check_room(user_id):
    try:
        service.room_for_batch(user_id)
    except service.BatchRefused as exc:
        raise ApiError(exc.status, exc.message, "rate_limit_exceeded", exc.param, exc.code) from None


def _input_file(data, key):
    file_id = data.get("input_file_id")
    if not isinstance(file_id, str) or not file_id:
        raise invalid("'input_file_id' is required: the id POST /v1/files returned.", "input_file_id")
    endpoint = data.get("endpoint")
    if endpoint != "/v1/chat/completions":
        raise invalid("'endpoint' must be \"/v1/chat/completions\" on this server.", "endpoint", "invalid_value")
    input_file = BatchFile.objects.filter(pk=file_id, owner_id=key.user_id).first()
    if input_file is None:
        raise ApiError(404, f"No such File object: {file_id[:100]}", param="input_file_id", code="file_not_found")
    return input_file


@api_view("GET", "POST")
async def batches(request):
    key = await authenticate_async(request)
    if request.method == "POST":
        remember_server_loop(asyncio.get_running_loop())  # for the driver thread's enqueues
        data = parse_body(request)
        input_file = await sync_to_async(_input_file)(data, key)
        # The cheap refusal first: checking a big file's every line takes seconds.
        await sync_to_async(_check_room)(key.user_id)
        # Checking every line takes seconds for a big file: not on the thread all database work shares.
        checked = await sync_to_async(service.check_file, thread_sensitive=False)(bytes(input_file.data),
                                                                                   data["endpoint"])
        return JsonResponse(await sync_to_async(_create_batch)(data, key, input_file, checked))
    queryset = Batch.objects.filter(owner_id=key.user_id)
    return JsonResponse(await sync_to_async(_page)(queryset, request, Batch))


@api_view("GET")
async def batch_detail(request, batch_id):
    key = await authenticate_async(request)
    return JsonResponse(await sync_to_async(lambda: _batch_of(key.user_id, batch_id).as_api())())


@api_view("POST")
async def batch_cancel(request, batch_id):
    key = await authenticate_async(request)

    def work():
        batch = _batch_of(key.user_id, batch_id)
        if batch.status not in (Batch.Status.VALIDATING, Batch.Status.IN_PROGRESS, Batch.Status.CANCELLING):
            raise ApiError(409, f"Cannot cancel a batch that is {batch.status}.", code="batch_not_cancellable")
        return service.cancel(batch).as_api()

    return JsonResponse(await sync_to_async(work)())
