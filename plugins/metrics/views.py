"""/metrics (Prometheus text), /metrics.json and the staff dashboard."""
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from inference.plugin_api import ANONYMOUS, FORBIDDEN, GRANTED, engine_stats, probe_access

from . import dashboard, exposition

REALM = 'Bearer realm="smolsite metrics"'


def metrics_access(view):
    """A bearer token (SMOLSITE_METRICS_TOKEN) or a staff session. No credentials or a wrong token:
    401 with WWW-Authenticate, as scrapers expect; signed in without staff status: 403."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        access = probe_access(request)
        if access == GRANTED:
            return view(request, *args, **kwargs)
        if access == FORBIDDEN:
            return HttpResponseForbidden("Metrics are for staff and for the metrics token.\n",
                                         content_type="text/plain")
        response = HttpResponse("Metrics need Authorization: Bearer <SMOLSITE_METRICS_TOKEN> or a staff session.\n",
                                status=401, content_type="text/plain")
        response["WWW-Authenticate"] = REALM if access == ANONYMOUS else REALM + ', error="invalid_token"'
        return response

    return wrapped


def staff_page(view):
    """Staff only: anonymous people are sent to sign in, others refused (403)."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        user = request.user
        if not user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not (user.is_active and user.is_staff):
            return HttpResponseForbidden("The dashboard is for staff.\n", content_type="text/plain")
        return view(request, *args, **kwargs)

    return wrapped


@require_GET
@metrics_access
def metrics_text(request):
    body, content_type = exposition.render()
    return HttpResponse(body, content_type=content_type)


def _total(samples, name, **match):
    return sum(s["value"] for s in samples.get(name, ())
               if all(s["labels"].get(k) == v for k, v in match.items()))


@require_GET
@metrics_access
def metrics_json(request):
    samples = exposition.samples()
    finished = {}
    for s in samples.get("smolsite_generations_finished_total", ()):
        finished[s["labels"]["status"]] = finished.get(s["labels"]["status"], 0) + s["value"]
    return JsonResponse({
        "generations_started": _total(samples, "smolsite_generations_total"),
        "generations_finished": finished,
        "generations_in_progress": _total(samples, "smolsite_generations_in_progress"),
        "prompt_tokens": _total(samples, "smolsite_prompt_tokens_total"),
        "cached_tokens": _total(samples, "smolsite_cached_tokens_total"),
        "completion_tokens": _total(samples, "smolsite_completion_tokens_total"),
        "engines": engine_stats(),
        "samples": samples,
    })


def _days(request):
    try:
        return max(1, min(int(request.GET.get("days", 14)), dashboard.MAX_DAYS))
    except ValueError:
        return 14


@require_GET
@staff_page
def dashboard_page(request):
    return render(request, "metrics/dashboard.html", {"days": _days(request),
                                                      "choices": (1, 7, 14, 30, 90)})


@require_GET
@staff_page
def dashboard_data(request):
    return JsonResponse(dashboard.figures(_days(request)))
