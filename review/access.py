"""Who may read what in the admin, and the record of it.

One setting, SMOLSITE_ADMIN_READ_MESSAGES, decides whether the admin shows users' message text at
all. Read at request time (not import time) so a changed setting takes effect at once. "Text"
means what people wrote and what models answered: message content and reasoning, system prompts,
request options (API turns), error text (it can quote the request) and conversation titles (made
from the first message)."""
from django.conf import settings
from django.core.exceptions import FieldDoesNotExist, PermissionDenied
from django.db.models import BooleanField, Case, Value, When

from .models import AuditRecord

PERMISSION = "review.view_transcript"
SESSION_KEY = "review_reasons"  # {conversation id: reason}, for this admin session only
HIDDEN = "[hidden: SMOLSITE_ADMIN_READ_MESSAGES is off]"


# Per model: the fields that hold what people wrote or models answered (batch errors and metadata
# quote request values and model output; a batch file holds the prompts).
TEXT_FIELDS = {
    "chat.conversation": {"title", "system_prompt"},
    "chat.message": {"content", "reasoning", "error", "options"},
    "chat.toolcall": {"arguments", "output"},
    "batches.batch": {"errors", "metadata"},
    "batches.batchline": {"body", "response", "error"},
    "batches.batchfile": {"data"},
}


def lookup_reaches_text(model, lookup):
    """Whether a query-string filter such as ``owner__conversations__title__icontains`` touches a
    text field of ``model`` or of any model it walks to."""
    for part in lookup.split("__"):
        if part in TEXT_FIELDS.get(model._meta.label_lower, ()):
            return True
        try:
            field = model._meta.get_field(part)
        except FieldDoesNotExist:
            return False
        if not field.is_relation or field.related_model is None:
            return False
        model = field.related_model
    return False


class TextLookupGuard:
    """For every ModelAdmin: query-string filters on text fields (?body__icontains=…, which the
    admin allows on any local field) are refused (400) whatever the setting: the result count
    would tell what people wrote, an unaudited search."""

    def lookup_allowed(self, lookup, value, request=None):
        if lookup_reaches_text(self.model, lookup):
            return False
        return super().lookup_allowed(lookup, value, request)


def text_readable():
    return bool(getattr(settings, "SMOLSITE_ADMIN_READ_MESSAGES", False))


def may_review(user):
    return user.is_active and user.is_staff and user.has_perm(PERMISSION)


def may_read_text(user):
    return text_readable() and may_review(user)


def may_read_conversation(request, conversation_id):
    """Text of one conversation (its title, its error text) shows outside the transcript only
    after this admin session gave a reason for it, as its transcript does."""
    return may_read_text(request.user) and bool(reason_for(request, conversation_id))


def reasoned_conversation_ids(request):
    if not may_read_text(request.user):
        return []
    return [int(key) for key in request.session.get(SESSION_KEY, {}) if key.isdigit()]


def text_flag(queryset, request, field="pk"):
    """Rows annotated ``_text``: whether this request may show their text (list columns get no
    request, and a ModelAdmin is shared by every request, so nothing per request may be kept on it)."""
    ids = reasoned_conversation_ids(request)
    if not ids:
        return queryset.annotate(_text=Value(False, output_field=BooleanField()))
    return queryset.annotate(_text=Case(When(**{f"{field}__in": ids}, then=Value(True)), default=Value(False),
                                        output_field=BooleanField()))


def require_review(request):
    if not may_review(request.user):
        raise PermissionDenied("Reading transcripts needs the review.view_transcript permission.")


def conversation_label(conv):
    """How the admin names a conversation when titles are text it may not show."""
    return f"Conversation #{conv.pk}"


def reason_for(request, conversation_id):
    return request.session.get(SESSION_KEY, {}).get(str(conversation_id))


def give_reason(request, conversation_ids, reason):
    reasons = dict(request.session.get(SESSION_KEY, {}))
    for conversation_id in conversation_ids:
        reasons[str(conversation_id)] = reason
    request.session[SESSION_KEY] = reasons  # reassigned so the session is saved


def audit(request, action, conversation=None, reason="", with_text=False, detail="", owner=None):
    owner = conversation.owner if conversation else owner
    return AuditRecord.objects.create(
        user=request.user, username=request.user.get_username(),
        conversation_id=conversation.pk if conversation else None,
        owner_username=owner.get_username() if owner else "",
        action=action, reason=reason, with_text=with_text, detail=detail[:300])


def deleted_objects(objs, request, admin_site):
    """Django's get_deleted_objects (the delete confirmation's list of everything that goes too),
    naming conversations without their titles unless this session gave a reason for them: deleting
    a user lists all their conversations."""
    from django.contrib.admin.utils import NestedObjects, quote
    from django.db import router
    from django.urls import NoReverseMatch, reverse
    from django.utils.html import format_html
    from django.utils.text import capfirst

    if not objs:
        return [], {}, set(), []
    collector = NestedObjects(using=router.db_for_write(objs[0]._meta.model), origin=objs)
    collector.collect(objs)
    perms_needed = set()

    def label(obj):
        if obj._meta.label_lower == "chat.conversation" and not may_read_conversation(request, obj.pk):
            return conversation_label(obj)
        return str(obj)

    def format_callback(obj):
        opts = obj._meta
        if not admin_site.is_registered(obj.__class__):
            return f"{capfirst(opts.verbose_name)}: {label(obj)}"
        if not admin_site.get_model_admin(obj.__class__).has_delete_permission(request, obj):
            perms_needed.add(opts.verbose_name)
        try:
            url = reverse(f"{admin_site.name}:{opts.app_label}_{opts.model_name}_change", args=[quote(obj.pk)])
        except NoReverseMatch:
            return f"{capfirst(opts.verbose_name)}: {label(obj)}"
        return format_html('{}: <a href="{}">{}</a>', capfirst(opts.verbose_name), url, label(obj))

    to_delete = collector.nested(format_callback)
    protected = [format_callback(obj) for obj in collector.protected]
    counts = {model._meta.verbose_name_plural: len(found) for model, found in collector.model_objs.items()}
    return to_delete, counts, perms_needed, protected
