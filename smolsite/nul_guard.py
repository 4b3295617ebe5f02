"""A NUL character in a URL path is refused with 400 before any view runs, and NULs in the
query string are dropped: PostgreSQL text cannot hold one, so a lookup by such an id
(``/batches/%00/input/``) or a filter (``/v1/files?purpose=%00``, an admin search) would fail
inside the database as a 500. No id of ours contains one; a search box given one searches the
rest of the text, as the chat sidebar always did. A cookie with one (``sessionid="\\000..."``: a
quoted cookie's octal escapes are decoded) is dropped, as if not sent: the session middleware would
look its key up in the database. Hence this middleware comes before the session middleware."""
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpResponse, JsonResponse, QueryDict
from django.http.cookie import parse_cookie

MESSAGE = "The address contains a NUL character (%00), which no page here accepts."


def refusal(request):
    """The 400 for a path with a NUL in it, else None (after dropping NULs from the query string)."""
    query = request.META.get("QUERY_STRING", "")
    if "\x00" in query or "%00" in query:
        cleaned = QueryDict(mutable=True)
        for key, values in request.GET.lists():
            cleaned.setlist(key.replace("\x00", ""), [v.replace("\x00", "") for v in values])
        cleaned._mutable = False
        request.GET = cleaned
    if any("\x00" in name or "\x00" in value for name, value in request.COOKIES.items()):
        request.COOKIES = {name: value for name, value in request.COOKIES.items()
                           if "\x00" not in name and "\x00" not in value}
    if "\x00" not in request.path:
        return None
    if request.path.startswith("/v1/"):
        return JsonResponse({"error": {"message": MESSAGE, "type": "invalid_request_error", "param": None,
                                       "code": "invalid_characters"}}, status=400)
    return HttpResponse(f"<!doctype html><title>Bad request · smolsite</title><p>{MESSAGE}</p>",
                        status=400, content_type="text/html; charset=utf-8")


class NulCharacterMiddleware:
    # Both kinds, so the async API views are not pushed through a thread by this check.
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return refusal(request) or self.get_response(request)

    async def __acall__(self, request):
        return refusal(request) or await self.get_response(request)


class NulCookieGuard:
    """The same for websockets (ASGI, around channels' cookie and session middleware): a Cookie
    header with a NUL in any cookie is dropped whole, so the socket is as one without a session."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        headers = scope.get("headers") or []
        if any(name == b"cookie" and _has_nul_cookie(value) for name, value in headers):
            scope = dict(scope, headers=[(name, value) for name, value in headers if name != b"cookie"])
        return await self.inner(scope, receive, send)


def _has_nul_cookie(value):
    return any("\x00" in k or "\x00" in v for k, v in parse_cookie(value.decode("latin-1")).items())
