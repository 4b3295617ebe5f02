"""Admin review of sessions: conversations (with a read-only transcript and an export action) and
messages (metrics, a review flag and note). Registered by review/admin.py: the admin of chat's
models is review's, since every page of it is gated by review's access policy.

Message text (content, reasoning, system prompts, request options, error text, and titles, which
are made from the first message) never appears on these pages, their inlines, lists, search or
logs unless SMOLSITE_ADMIN_READ_MESSAGES is on; and even then only behind a reason given once per
conversation per admin session: the transcript and the export (each read written to the audit log,
review.AuditRecord) show the text, and lists and change pages show a conversation's title and error
text only once its reason was given (reading it then was audited). See review/access.py."""
import copy
import json

from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import Count, Exists, OuterRef, Sum
from django.db.models.functions import Coalesce
from django.http import HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import content_disposition_header

from chat import export
from chat.models import Conversation, Message

from . import access
from . import views as review_views
from .forms import ReasonForm
from .models import AuditRecord
from .transcript import queue_wait


def masked(conv):
    """A copy of the conversation that names itself without its title (admin log entries, change,
    delete and history pages use str(obj)); never saved."""
    conv = copy.copy(conv)
    conv.title = access.conversation_label(conv)
    return conv


def _seconds(value, places=2):
    return "–" if value is None else f"{value:.{places}f} s"


class StatusFilter(admin.SimpleListFilter):
    """Conversations by what happened to their answers."""
    title = "status"
    parameter_name = "status"
    CHOICES = {
        "error": ("has errors", [Message.Status.ERROR]),
        "interrupted": ("interrupted", [Message.Status.INTERRUPTED]),
        "stopped": ("stopped", [Message.Status.STOPPED]),
        "active": ("generating now", list(Message.ACTIVE)),
    }

    def lookups(self, request, model_admin):
        return [(key, label) for key, (label, _) in self.CHOICES.items()] + [("flagged", "has flagged messages")]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "flagged":
            return queryset.filter(Exists(Message.objects.filter(conversation=OuterRef("pk"), flagged=True)))
        if value in self.CHOICES:
            statuses = self.CHOICES[value][1]
            return queryset.filter(Exists(Message.objects.filter(conversation=OuterRef("pk"), status__in=statuses)))
        return queryset


class AuditedTextSearch(access.TextLookupGuard):
    """Search over message text only where text may be read at all, and each such search audited:
    its hits tell what people wrote even though no text is shown. Query-string filters on text
    fields are refused always (access.TextLookupGuard)."""
    base_search_fields = ()
    text_search_fields = ()

    def get_search_fields(self, request):
        if access.may_read_text(request.user):
            return list(self.base_search_fields) + list(self.text_search_fields)
        return list(self.base_search_fields)

    def get_search_results(self, request, queryset, search_term):
        results = super().get_search_results(request, queryset, search_term)
        if search_term.strip() and access.may_read_text(request.user) and self.text_search_fields:
            access.audit(request, AuditRecord.Action.SEARCH, with_text=True,
                         detail=f"{self.model._meta.model_name}: {search_term.strip()}")
        return results


class MessageInline(admin.TabularInline):
    """The conversation's messages as metadata; their text is only on the transcript page."""
    model = Message
    fk_name = "conversation"
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ["id", "parent", "role", "status", "model_name", "worker_id", "prompt_tokens", "completion_tokens",
              "ttft", "tokens_per_second", "flagged", "created_at"]
    readonly_fields = fields
    ordering = ["created_at", "id"]

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Conversation)
class ConversationAdmin(AuditedTextSearch, admin.ModelAdmin):
    list_display = ["label", "owner", "model", "source", "message_count", "tokens", "updated_at", "transcript"]
    list_display_links = ["label"]
    list_filter = [("owner", admin.RelatedOnlyFieldListFilter), "model", "updated_at", StatusFilter, "source",
                   "kept"]
    base_search_fields = ["=id", "owner__username", "model"]
    text_search_fields = ["title", "messages__content"]
    list_select_related = ["owner"]
    date_hierarchy = "updated_at"
    inlines = [MessageInline]
    actions = ["export_zip", "export_json", "export_markdown"]
    # Everything but the retention exemption is what users and workers wrote: read-only here.
    METADATA = ["owner", "model", "source", "api_key", "message_count", "tokens", "created_at", "updated_at",
                "current_leaf", "temperature", "top_p", "max_tokens", "thinking", "transcript"]

    def get_fields(self, request, obj=None):
        titled = obj is not None and access.may_read_conversation(request, obj.pk)
        return (["title"] if titled else []) + self.METADATA + ["kept"]

    def get_readonly_fields(self, request, obj=None):
        return ["title"] + self.METADATA

    def get_queryset(self, request):
        return access.text_flag(super().get_queryset(request), request).annotate(
            _messages=Count("messages"),
            _tokens=Coalesce(Sum("messages__prompt_tokens"), 0) + Coalesce(Sum("messages__completion_tokens"), 0))

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is not None and not access.may_read_conversation(request, obj.pk):
            obj = masked(obj)
        return obj

    def has_add_permission(self, request):
        return False

    def save_model(self, request, obj, form, change):
        # Only "kept" is editable; an update leaves the rest of the row (and a masked title) alone.
        Conversation.objects.filter(pk=obj.pk).update(kept=obj.kept)

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects([masked(o) for o in objs], request)
        # Messages go with their conversation; they cannot be deleted one by one (MessageAdmin).
        perms_needed.discard(Message._meta.verbose_name)
        return deleted, counts, perms_needed, protected

    def action_checkbox(self, obj):
        # Its aria-label names the object.
        return super().action_checkbox(obj if getattr(obj, "_text", False) else masked(obj))

    def log_addition(self, request, obj, message):
        return super().log_addition(request, masked(obj), message)

    def log_change(self, request, obj, message):
        return super().log_change(request, masked(obj), message)

    def log_deletions(self, request, queryset):
        return super().log_deletions(request, [masked(o) for o in queryset])

    def get_actions(self, request):
        actions = super().get_actions(request)
        if not access.may_review(request.user):
            for name in self.actions:
                actions.pop(name, None)
        return actions

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:object_id>/transcript/", wrap(self.transcript_view), name="chat_conversation_transcript"),
            path("<int:object_id>/transcript/reason/", wrap(self.reason_view), name="chat_conversation_reason"),
        ] + super().get_urls()

    def transcript_view(self, request, object_id):
        return review_views.transcript(request, self, object_id)

    def reason_view(self, request, object_id):
        return review_views.reason(request, self, object_id)

    # ---- columns ----------------------------------------------------------------------------

    @admin.display(description="conversation", ordering="pk")
    def label(self, obj):
        return obj.title if getattr(obj, "_text", False) else access.conversation_label(obj)

    @admin.display(description="messages", ordering="_messages")
    def message_count(self, obj):
        return getattr(obj, "_messages", None)

    @admin.display(description="tokens", ordering="_tokens")
    def tokens(self, obj):
        return getattr(obj, "_tokens", None)

    @admin.display(description="transcript")
    def transcript(self, obj):
        return format_html('<a class="transcript-link" href="{}">transcript</a>',
                           reverse("admin:chat_conversation_transcript", args=[obj.pk]))

    # ---- export -----------------------------------------------------------------------------

    @admin.action(description="Export selected conversations (zip of JSON and Markdown)")
    def export_zip(self, request, queryset):
        return self._export(request, queryset, "zip")

    @admin.action(description="Export selected conversations (one JSON file)")
    def export_json(self, request, queryset):
        return self._export(request, queryset, "json")

    @admin.action(description="Export selected conversations (one Markdown file)")
    def export_markdown(self, request, queryset):
        return self._export(request, queryset, "markdown")

    def _export(self, request, queryset, fmt):
        access.require_review(request)
        conversations = list(queryset.select_related("owner").order_by("pk"))
        with_text = access.may_read_text(request.user)
        if with_text:
            missing = [c for c in conversations if not access.reason_for(request, c.pk)]
            if missing:
                form = ReasonForm(request.POST if "reason" in request.POST else None)
                if not form.is_valid():
                    return self._ask_reason(request, form, missing, conversations)
                access.give_reason(request, [c.pk for c in missing], form.cleaned_data["reason"])
        for conv in conversations:
            access.audit(request, AuditRecord.Action.EXPORT, conv, with_text=with_text, detail=fmt,
                         reason=(access.reason_for(request, conv.pk) or "") if with_text else "")
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        if fmt == "zip":
            body, content_type, ext = export.export_zip(conversations, include_text=with_text), "application/zip", "zip"
        elif fmt == "json":
            body = json.dumps({"format": "smolsite.admin-export", "text_included": with_text,
                               "conversations": [export.conversation_json(c, include_text=with_text)
                                                 for c in conversations]}, indent=2, ensure_ascii=False)
            content_type, ext = "application/json", "json"
        else:
            body = "\n---\n\n".join(export.conversation_markdown(c, include_text=with_text) for c in conversations)
            content_type, ext = "text/markdown; charset=utf-8", "md"
        response = HttpResponse(body, content_type=content_type)
        response["Content-Disposition"] = content_disposition_header(True, f"conversations-{stamp}.{ext}")
        return response

    def _ask_reason(self, request, form, missing, conversations):
        """The intermediate page of the export action: it posts the same action and selection back
        with a reason."""
        hidden = [("action", request.POST.get("action", "")), ("index", "0"), ("select_across", "0")]
        hidden += [(ACTION_CHECKBOX_NAME, c.pk) for c in conversations]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Why do you need to export these conversations?",
            "form": form,
            "conversations": missing,
            "hidden_fields": hidden,
            "submit_label": "Export",
        }
        return TemplateResponse(request, "review/reason.html", context)


@admin.register(Message)
class MessageAdmin(AuditedTextSearch, admin.ModelAdmin):
    list_display = ["id", "conversation_link", "owner", "role", "status", "model_name", "worker_id", "ttft_s",
                    "tokens_per_second_col", "queue_wait_s", "completion_tokens", "flagged", "error_text",
                    "created_at"]
    list_filter = ["flagged", "status", "role", "model_name", "conversation__source", "created_at",
                   ("conversation__owner", admin.RelatedOnlyFieldListFilter)]
    base_search_fields = ["=id", "=conversation__id", "conversation__owner__username", "model_name", "worker_id"]
    text_search_fields = ["content"]
    list_select_related = ["conversation__owner"]
    actions = ["flag", "unflag"]
    fields = ["conversation_link", "owner", "parent", "role", "status", "finish_reason", "model_name",
              "backend_name", "worker_id", "prompt_tokens", "cached_tokens", "completion_tokens", "ttft",
              "tokens_per_second", "queue_wait_s", "reasoning_seconds", "dropped_turns", "error_text",
              "created_at", "finished_at", "transcript", "flagged", "review_note"]
    EDITABLE = ("flagged", "review_note")
    readonly_fields = fields[:-2]  # all but EDITABLE, the last two

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # a message's replies hang off it: deleting one would cut the conversation's tree

    def save_model(self, request, obj, form, change):
        # Only the review fields: a save of the whole row could overwrite an answer still streaming.
        Message.objects.filter(pk=obj.pk).update(**{name: getattr(obj, name) for name in self.EDITABLE})

    def get_queryset(self, request):
        return access.text_flag(super().get_queryset(request), request, field="conversation_id")

    @admin.action(description="Flag selected messages for review")
    def flag(self, request, queryset):
        count = queryset.update(flagged=True)
        self.message_user(request, f"{count} message(s) flagged.")

    @admin.action(description="Clear the review flag of selected messages")
    def unflag(self, request, queryset):
        count = queryset.update(flagged=False)
        self.message_user(request, f"{count} message(s) unflagged.")

    @admin.display(description="conversation", ordering="conversation_id")
    def conversation_link(self, obj):
        return format_html('<a href="{}">#{}</a>', reverse("admin:chat_conversation_change", args=[obj.conversation_id]),
                           obj.conversation_id)

    @admin.display(description="owner", ordering="conversation__owner__username")
    def owner(self, obj):
        return obj.conversation.owner.get_username()

    @admin.display(description="ttft", ordering="ttft")
    def ttft_s(self, obj):
        return _seconds(obj.ttft)

    @admin.display(description="tok/s", ordering="tokens_per_second")
    def tokens_per_second_col(self, obj):
        return "–" if obj.tokens_per_second is None else f"{obj.tokens_per_second:.1f}"

    @admin.display(description="queue wait")
    def queue_wait_s(self, obj):
        """Derived, not stored: see review.transcript.queue_wait."""
        return _seconds(queue_wait(obj)) if obj.role == Message.Role.ASSISTANT else "–"

    @admin.display(description="error")
    def error_text(self, obj):
        if not obj.error:
            return ""
        # Error text can quote the request (a schema, a prompt): text, hidden when text is.
        if not getattr(obj, "_text", False):
            return access.HIDDEN
        return obj.error if len(obj.error) <= 200 else obj.error[:200] + "…"

    @admin.display(description="transcript")
    def transcript(self, obj):
        url = reverse("admin:chat_conversation_transcript", args=[obj.conversation_id])
        return format_html('<a href="{}?leaf={}#msg-{}">read in the transcript</a>', url, obj.pk, obj.pk)
