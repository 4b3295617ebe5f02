"""/healthz: the process answers. /readyz: database, channel layer and a worker holding a model.

Load balancers read only the status code. The detail (worker ids, which carry host names, and
exception text) is for staff and for holders of the metrics token (``probe_access``); anonymous
callers get each check's ok and nothing else."""
import hmac
import logging
import uuid

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import JsonResponse

from .workers import alive_workers

logger = logging.getLogger(__name__)

GRANTED, ANONYMOUS, INVALID_TOKEN, FORBIDDEN = "granted", "anonymous", "invalid_token", "forbidden"


def probe_access(request):
    """Who may see operational detail (/readyz's, /metrics): ``Authorization: Bearer
    <SMOLSITE_METRICS_TOKEN>`` or a staff session. One of GRANTED, ANONYMOUS (no credentials),
    INVALID_TOKEN (a bearer token that is not the setting's) or FORBIDDEN (signed in, not staff)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        token = getattr(settings, "SMOLSITE_METRICS_TOKEN", "")
        value = value.strip()
        # Constant time: a scraper's token is not guessable byte by byte.
        if token and value and hmac.compare_digest(value.encode(), token.encode()):
            return GRANTED
        return INVALID_TOKEN
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return GRANTED if user.is_active and user.is_staff else FORBIDDEN
    return ANONYMOUS


def healthz(request):
    return JsonResponse({"status": "ok"})


def _check_database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _check_channel_layer():
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")

    async def roundtrip():
        channel = await layer.new_channel("readyz.")
        token = uuid.uuid4().hex
        await layer.send(channel, {"type": "readyz.ping", "token": token})
        message = await layer.receive(channel)
        if message.get("token") != token:
            raise RuntimeError("channel layer returned another message")

    async_to_sync(roundtrip)()


def readyz(request):
    checks = {}
    for name, check in (("database", _check_database), ("channel_layer", _check_channel_layer)):
        try:
            check()
            checks[name] = {"ok": True}
        except Exception as exc:
            logger.warning("readyz: %s check failed: %s: %s", name, type(exc).__name__, exc)
            checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    workers = [w for w in alive_workers() if w.get("models")]
    checks["workers"] = {"ok": bool(workers), "workers": workers}
    if not workers:
        checks["workers"]["error"] = "no device worker with a loaded model"
        # A worker that is up but could not load its models says why (a missing or corrupt file).
        failed = [f"{w['id']}: {w['error']}" for w in alive_workers() if not w.get("models") and w.get("error")]
        if failed:
            checks["workers"]["error"] += " (" + "; ".join(failed) + ")"
    # Models a plugin's worker cannot serve now (an upstream down), with why: for staff, not readiness.
    unavailable = {}
    for w in alive_workers():
        unavailable.update(w.get("unavailable") or {})
    if unavailable:
        checks["workers"]["unavailable"] = unavailable
    ready = all(c["ok"] for c in checks.values())
    if probe_access(request) != GRANTED:
        # Anonymous: only whether each check passed (no ids, host names or exception text).
        checks = {name: {"ok": c["ok"]} for name, c in checks.items()}
    return JsonResponse({"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503)
