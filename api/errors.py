"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``, always JSON."""
from django.http import JsonResponse


class ApiError(Exception):
    def __init__(self, status, message, type="invalid_request_error", param=None, code=None, retry_after=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.retry_after = retry_after

    def payload(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self):
        response = JsonResponse(self.payload(), status=self.status)
        if self.retry_after is not None:
            response["Retry-After"] = str(int(self.retry_after))
        return response


def invalid(message, param=None, code=None):
    return ApiError(400, message, "invalid_request_error", param, code)


def error_response(status, message, type="invalid_request_error", param=None, code=None, retry_after=None):
    return ApiError(status, message, type, param, code, retry_after).response()


def not_found(request, exception=None):
    return error_response(404, f"Unknown API route: {request.method} {request.path}. See docs/api.md.",
                          code="unknown_url")


def method_not_allowed(request, allowed):
    response = error_response(405, f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}.",
                              code="method_not_allowed")
    response["Allow"] = ", ".join(allowed)
    return response


def is_api_path(request):
    return request.path == "/v1" or request.path.startswith("/v1/")


# Django's error handlers, JSON under /v1/ (a bad Host header, an oversized body, a crash)
# and Django's own pages elsewhere.
def handler400(request, exception=None):
    if is_api_path(request):
        return error_response(400, "Bad request.")
    from django.views import defaults

    return defaults.bad_request(request, exception)


def handler403(request, exception=None):
    if is_api_path(request):
        return error_response(403, "Forbidden.", code="forbidden")
    from django.views import defaults

    return defaults.permission_denied(request, exception)


def handler404(request, exception=None):
    if is_api_path(request):
        return not_found(request)
    from django.views import defaults

    return defaults.page_not_found(request, exception)


def handler500(request):
    if is_api_path(request):
        return error_response(500, "The server failed while handling this request.", "server_error")
    from django.views import defaults

    return defaults.server_error(request)
