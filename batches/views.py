"""The Batches page: upload a JSONL (OpenAI Batch shape) or CSV (a prompt column) file, watch
each batch's progress (the list fragment polls itself every 2 s while a batch is active), cancel,
download results. Everything is the signed-in user's own; other users' batches are 404s."""
import json

from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_GET, require_POST

from api.errors import ApiError
from inference.model_configs import all_models

from . import service, uploads
from .models import Batch, BatchLine
from .validation import BatchInvalid, csv_to_jsonl

PREVIEW = 3  # first results shown per batch
PREVIEW_BATCHES = 10  # the newest batches with results get a preview


class UploadForm(forms.Form):
    file = forms.FileField(help_text="JSONL in OpenAI's Batch shape, or CSV with a prompt column (optional system, "
                                     "custom_id).")
    model = forms.ChoiceField(required=False, help_text="For a CSV.")
    max_tokens = forms.IntegerField(required=False, min_value=1, max_value=100000, label="Max tokens",
                                    help_text="For a CSV; empty: the API's default.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = [(m.name, m.name) for m in all_models()]


def _stats(batch, now):
    """Tokens per second and an estimate of the time left, from what has run so far."""
    start = batch.in_progress_at
    if start is None:
        return None, None
    end = batch.completed_at or batch.cancelled_at or batch.expired_at or batch.failed_at or now
    elapsed = max(0.001, (end - start).total_seconds())
    rate = batch.completion_tokens / elapsed
    left = None
    if batch.is_active and batch.done_count:
        left = int(elapsed / batch.done_count * (batch.total - batch.done_count))
    return rate, left


def _duration(seconds):
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _rows(user):
    batches = list(Batch.objects.filter(owner=user).select_related("input_file")[:50])
    now = timezone.now()
    previews = {}
    for b in [b for b in batches if b.completed][:PREVIEW_BATCHES]:
        items = previews[b.id] = []
        for line in BatchLine.objects.filter(batch=b, status=BatchLine.Status.DONE).order_by("index")[:PREVIEW]:
            try:
                text = line.response["body"]["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                text = ""
            items.append({"custom_id": line.custom_id, "text": text[:400]})
    rows = []
    for b in batches:
        rate, left = _stats(b, now)
        rows.append({"batch": b, "rate": rate, "left": _duration(left), "preview": previews.get(b.id, [])})
    return rows, any(b.is_active for b in batches)


def _list_context(user):
    rows, polling = _rows(user)
    return {"rows": rows, "polling": polling}


@login_required
def page(request):
    form = UploadForm(request.POST or None, request.FILES or None)
    problem = None
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            service.room_for_batch(request.user.pk)  # before reading and checking the file
            if upload.size > settings.SMOLSITE_BATCH_MAX_BYTES:
                raise BatchInvalid([{"code": "file_too_large", "message": f"The file is {upload.size:,} bytes; at most "
                                     f"{settings.SMOLSITE_BATCH_MAX_BYTES:,} are accepted.", "line": None}])
            data = upload.read()
            name = upload.name or "input"
            if name.lower().endswith(".csv"):
                data = csv_to_jsonl(data, form.cleaned_data["model"] or next(iter(all_models())).name,
                                    form.cleaned_data["max_tokens"])
                name = name[:-4] + ".jsonl"
            checked = service.check_file(data)  # seconds for a big file: not inside the transaction
            with transaction.atomic():  # a refused batch (too many running, ...) leaves no stored file behind
                uploads.check_user_cap(request.user, len(data))
                service.create_batch(request.user, service.store_file(request.user, name, data), checked=checked)
            return redirect("batches:page")
        except BatchInvalid as exc:
            problem = exc.errors
        except service.BatchRefused as exc:
            problem = [{"code": exc.code, "message": exc.message, "line": None}]
        except ApiError as exc:  # the per-user file cap
            problem = [{"code": exc.code, "message": exc.message, "line": None}]
    status = 422 if request.method == "POST" else 200
    return render(request, "batches/page.html", {"form": form, "problem": problem, **_list_context(request.user)},
                  status=status)


@login_required
@require_GET
def batch_list(request):
    return render(request, "batches/_list.html", _list_context(request.user))


@login_required
@require_POST
def cancel(request, batch_id):
    batch = get_object_or_404(Batch, pk=batch_id, owner=request.user)
    if batch.is_active:
        service.cancel(batch)
    if request.htmx:
        return render(request, "batches/_list.html", _list_context(request.user))
    return redirect("batches:page")


@login_required
@require_GET
def download(request, batch_id, which):
    batch = get_object_or_404(Batch, pk=batch_id, owner=request.user)
    found = {"input": batch.input_file, "output": batch.output_file, "errors": batch.error_file}.get(which)
    if found is None:
        raise Http404("no such file")
    response = HttpResponse(bytes(found.data), content_type="application/jsonl")
    response["Content-Disposition"] = content_disposition_header(True, found.filename)
    return response


@login_required
@require_GET
def errors(request, batch_id):
    """A failed batch's validation errors as JSON (the page lists the first ones)."""
    batch = get_object_or_404(Batch, pk=batch_id, owner=request.user)
    return HttpResponse(json.dumps(batch.errors or [], indent=1), content_type="application/json")
