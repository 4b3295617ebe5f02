"""Who may read what in the admin, and the record of it.

One setting, SMOLSITE_ADMIN_READ_MESSAGES, decides whether the admin shows users' message text at
all. Read at request time (not import time) so a changed setting takes effect at once. "Text"
means what people wrote and what models answered: message content and reasoning, system prompts,
request options (API turns), error text (it can quote the request) and conversation titles (made
from the first message)."""
from django.conf import settings
from django.core.exceptions import PermissionDenied

from .models import AuditRecord

PERMISSION = "review.view_transcript"
SESSION_KEY = "review_reasons"  # {conversation id: reason}, for this admin session only
HIDDEN = "[hidden: SMOLSITE_ADMIN_READ_MESSAGES is off]"


def text_readable():
    return bool(getattr(settings, "SMOLSITE_ADMIN_READ_MESSAGES", False))


def may_review(user):
    return user.is_active and user.is_staff and user.has_perm(PERMISSION)


def may_read_text(user):
    return text_readable() and may_review(user)


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


def audit(request, action, conversation=None, reason="", with_text=False, detail=""):
    return AuditRecord.objects.create(
        user=request.user, username=request.user.get_username(),
        conversation_id=conversation.pk if conversation else None,
        owner_username=conversation.owner.get_username() if conversation else "",
        action=action, reason=reason, with_text=with_text, detail=detail[:300])
