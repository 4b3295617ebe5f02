"""A NUL character in a URL path is refused with 400 before any view runs, and NULs in the
query string are dropped: PostgreSQL text cannot hold one, so a lookup by such an id
(``/batches/%00/input/``) or a filter (``/v1/files?purpose=%00``, an admin search) would fail
inside the database as a 500. No id of ours contains one; a search box given one searches the
rest of the text, as the chat sidebar always did."""
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpResponse, JsonResponse, QueryDict

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
