"""API requests authenticate with ``Authorization: Bearer <key>`` only (never a session cookie)."""
from asgiref.sync import sync_to_async

from .errors import ApiError
from .models import ApiKey


def authenticate(request):
    """The request's usable ApiKey (with its user loaded), or ApiError 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.strip().partition(" ")
    raw = raw.strip()
    if not header.strip():
        raise ApiError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY' "
                            "(make one on your account page).", code="missing_api_key")
    if scheme.lower() != "bearer" or not raw:
        raise ApiError(401, "Malformed Authorization header: send 'Authorization: Bearer YOUR_KEY'.",
                       code="invalid_api_key")
    key = ApiKey.authenticate(raw)
    if key is None:
        raise ApiError(401, "Incorrect API key provided (or it was revoked or has expired).", code="invalid_api_key")
    return key


# The same from async code (the API views, the batch endpoints).
authenticate_async = sync_to_async(authenticate)
