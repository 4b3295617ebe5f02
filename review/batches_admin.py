"""Batches in the admin (registered by review/admin.py: its pages are gated by review's access
policy): their state and counts. Line bodies, answers and errors, and a batch's
validation errors and metadata, are text (errors quote request values and model output): no list,
change page, search or filter shows or matches them. With SMOLSITE_ADMIN_READ_MESSAGES on, a
reviewer reads a batch's errors, metadata and line errors on its own page, behind a reason given
once per batch per admin session, each view audited (the same rule as a transcript); line bodies
and answers through the line's conversation transcript."""
import json

from django.contrib import admin
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from batches.models import Batch, BatchFile, BatchLine

from . import access
from .forms import ReasonForm
from .models import AuditRecord

BATCH_TEXT = ("errors", "metadata")
LINE_TEXT = ("body", "response", "error")
MAX_LINE_ERRORS = 1000  # shown on the text page


def _text_link(batch_pk):
    url = reverse("admin:batches_batch_text", args=[quote(batch_pk)])
    return format_html('<a class="batch-text-link" href="{}">read (a reason is asked, and recorded)</a>', url)


class LineInline(admin.TabularInline):
    model = BatchLine
    fields = ("index", "custom_id", "status", "attempts", "completion_tokens", "message_ids", "finished_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    max_num = 0


@admin.register(Batch)
class BatchAdmin(access.TextLookupGuard, admin.ModelAdmin):
    list_display = ("id", "owner", "status", "models_used", "total", "completed", "failed", "created_at",
                    "completed_at")
    list_filter = ("status", "models_used")
    search_fields = ("id", "owner__username")
    fields = [f.name for f in Batch._meta.fields if f.name not in BATCH_TEXT] + ["text"]
    readonly_fields = fields
    inlines = [LineInline]

    @admin.display(description="errors and metadata")
    def text(self, obj):
        return _text_link(obj.pk)

    def get_urls(self):
        return [path("<path:object_id>/text/", self.admin_site.admin_view(self.text_view),
                     name="batches_batch_text")] + super().get_urls()

    def text_view(self, request, object_id):
        """The batch's errors, metadata and line errors: with the switch off, a page saying they are
        hidden; on, a reason first (once per batch per admin session), then every view audited."""
        if not (access.may_review(request.user) and self.has_view_permission(request)):
            raise PermissionDenied("Reading batch errors needs the review.view_transcript permission.")
        batch = Batch.objects.select_related("owner").filter(pk=unquote(object_id)[:40]).first()
        if batch is None:
            raise Http404("No such batch.")
        key = f"batch:{batch.pk}"
        with_text = access.may_read_text(request.user)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "batch": batch,
                   "with_text": with_text, "hidden": access.HIDDEN}
        if with_text:
            reason = access.reason_for(request, key)
            if not reason:
                form = ReasonForm(request.POST or None)
                if request.method == "POST" and form.is_valid():
                    access.give_reason(request, [key], form.cleaned_data["reason"])
                    return HttpResponseRedirect(request.path)
                return TemplateResponse(request, "review/reason.html", {
                    **context, "title": f"Why do you need to read batch {batch.pk}'s errors?", "form": form,
                    "conversations": [batch], "submit_label": "Read the errors"})
            access.audit(request, AuditRecord.Action.VIEW, reason=reason, with_text=True, owner=batch.owner,
                         detail=f"batch {batch.pk}: errors, metadata and line errors")
            context.update(reason=reason, errors=json.dumps(batch.errors, indent=1, ensure_ascii=False),
                           metadata=json.dumps(batch.metadata, indent=1, ensure_ascii=False),
                           lines=[{**line, "error": json.dumps(line["error"], ensure_ascii=False)} for line in
                                  batch.lines.exclude(error=None).order_by("index")
                                  .values("index", "custom_id", "error")[:MAX_LINE_ERRORS]])
        context["title"] = f"Errors and metadata of batch {batch.pk}"
        return TemplateResponse(request, "batches/admin_text.html", context)


@admin.register(BatchLine)
class BatchLineAdmin(access.TextLookupGuard, admin.ModelAdmin):
    list_display = ("batch", "index", "custom_id", "status", "attempts", "completion_tokens")
    list_filter = ("status",)
    search_fields = ("batch__id", "custom_id")
    exclude = LINE_TEXT
    readonly_fields = [f.name for f in BatchLine._meta.fields if f.name not in LINE_TEXT] + ["transcript",
                                                                                             "error_text"]

    @admin.display(description="conversation")
    def transcript(self, obj):
        if not obj.conversation_id:
            return "-"
        url = reverse("admin:chat_conversation_change", args=[obj.conversation_id])
        return format_html('<a href="{}">conversation #{}</a>', url, obj.conversation_id)

    @admin.display(description="error")
    def error_text(self, obj):
        return _text_link(obj.batch_id) if obj.error else "-"


@admin.register(BatchFile)
class BatchFileAdmin(access.TextLookupGuard, admin.ModelAdmin):
    list_display = ("id", "owner", "filename", "purpose", "bytes", "created_at", "expires_at")
    list_filter = ("purpose",)
    search_fields = ("id", "filename", "owner__username")
    exclude = ("data",)
    readonly_fields = ("id", "owner", "filename", "purpose", "bytes", "created_at", "expires_at")
