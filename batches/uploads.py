"""Limits on stored files: an upload's size, refused before its body is read where the length is
declared and cut off while it streams where it is not; and a per-user cap on how many files and
how many bytes one account keeps (OpenAI caps a project's files the same way)."""
import json
import os

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.db.models import Count, Sum

from api.errors import ApiError

# A multipart body is the file plus its part headers and the other fields: this much slack on top
# of the file limit before a declared length is refused outright.
MULTIPART_SLACK = 64 * 1024
UPLOAD_PATHS = ("/v1/files", "/batches")  # the API's uploads and the Batches page's form


def _setting(name, default):
    return int(getattr(settings, name, os.environ.get(name, default)) or 0)


def max_file_bytes():
    return settings.SMOLSITE_BATCH_MAX_BYTES


def max_body_bytes():
    return max_file_bytes() + MULTIPART_SLACK


def max_files_per_user():
    return _setting("SMOLSITE_MAX_FILES_PER_USER", "100")


def max_file_storage_per_user():
    return _setting("SMOLSITE_MAX_FILE_BYTES_PER_USER", str(1024 ** 3))


def too_large(size=None):
    told = f"The file is {size:,} bytes" if size else "The upload is larger than the limit"
    return ApiError(413, f"{told}; at most {max_file_bytes():,} bytes are accepted.", param="file",
                    code="file_too_large")


class SizeCap(FileUploadHandler):
    """First of a request's upload handlers: counts the file bytes as the multipart parser reads
    them and stops the upload (nothing more is read) past the limit, whatever the request said
    its length was."""

    def __init__(self, request=None, limit=None):
        super().__init__(request)
        self.limit = max_file_bytes() if limit is None else limit
        self.received = 0
        self.exceeded = False

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.limit:
            self.exceeded = True
            raise StopUpload(connection_reset=True)
        return raw_data

    def file_complete(self, file_size):
        return None


def declared_length(request):
    """The body's declared length; an ApiError when it is over the limit (nothing read yet)."""
    raw = request.META.get("CONTENT_LENGTH") or ""
    try:
        length = int(raw) if raw else None
    except ValueError:
        raise ApiError(400, "Content-Length is not a number.", code="invalid_content_length") from None
    if length is not None and length > max_body_bytes():
        raise too_large(length)
    return length


def check_user_cap(user, new_bytes):
    """Refuse a new file that would take ``user`` past the per-user count or total size. Takes
    the user's row lock (inside the caller's transaction) so two uploads at once cannot both pass
    a cap with room for one."""
    get_user_model().objects.select_for_update().filter(pk=user.pk).exists()
    from .models import BatchFile

    have = BatchFile.objects.filter(owner=user).aggregate(n=Count("id"), size=Sum("bytes"))
    count, size = have["n"] or 0, have["size"] or 0
    most_files, most_bytes = max_files_per_user(), max_file_storage_per_user()
    if most_files and count + 1 > most_files:
        raise ApiError(400, f"You have {count} stored files; at most {most_files} are kept per user. Delete some "
                            "(DELETE /v1/files/{file_id}) first.", param="file", code="file_limit_exceeded")
    if most_bytes and size + new_bytes > most_bytes:
        raise ApiError(400, f"Your stored files take {size:,} bytes; this one ({new_bytes:,}) would pass the "
                            f"{most_bytes:,} bytes kept per user. Delete some (DELETE /v1/files/{{file_id}}) first.",
                       param="file", code="storage_limit_exceeded")


class UploadCap:
    """ASGI middleware in front of Django for POST /v1/files: Django reads a whole request body
    into a spooled file before any view runs, so the limit has to be applied here. A declared
    Content-Length over the limit is answered 413 without reading the body; a body without one
    (chunked) is cut off, and answered 413, as soon as it passes the limit."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path", "").rstrip("/") not in UPLOAD_PATHS:
            return await self.app(scope, receive, send)
        limit = max_body_bytes()
        for name, value in scope.get("headers", []):
            if name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                if declared is not None and declared > limit:
                    return await _refuse(scope, send, too_large(declared))
        received = 0

        async def capped():
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, capped, send)
        except _TooLarge:
            await _refuse(scope, send, too_large())


class _TooLarge(Exception):
    pass


async def _refuse(scope, send, error):
    """The API's JSON error shape under /v1/, plain text for the page's form."""
    if scope["path"].startswith("/v1/"):
        body, kind = json.dumps(error.payload()).encode(), b"application/json"
    else:
        body, kind = error.message.encode(), b"text/plain; charset=utf-8"
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
