"""A database that cannot be reached (restarting, a network blip) answers 503 with a sentence
saying so, not a 500 page: the request wrote nothing (each action is one transaction), and the
next request connects again by itself."""
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin

MESSAGE = "The database is unavailable right now. Nothing was changed; try again in a moment."
RETRY_AFTER_SECONDS = 5


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    def process_exception(self, request, exception):
        # OperationalError: cannot connect or the connection dropped; InterfaceError: a connection
        # the server closed. Other database errors are bugs and stay 500s.
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        if request.path.startswith("/v1/"):
            response = JsonResponse({"error": {"message": MESSAGE, "type": "service_unavailable",
                                               "code": "database_unavailable"}}, status=503)
        else:
            response = HttpResponse(f"<!doctype html><title>Unavailable · smolsite</title><p>{MESSAGE}</p>",
                                    status=503, content_type="text/html; charset=utf-8")
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
