"""The sidebar's conversation list: a user's chats, newest first, grouped by age, optionally
filtered by a search over titles and message text."""
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from .models import Conversation, Message

SNIPPET_CHARS = 80
MAX_RESULTS = 200


def snippet(text, query, width=SNIPPET_CHARS):
    """A window of ``text`` around the first match of ``query``, on one line."""
    text = " ".join(text.split())
    at = text.lower().find(query.lower())
    if at < 0:
        return text[:width]
    start = max(0, at - width // 3)
    end = min(len(text), start + width)
    return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")


def search(user, query=""):
    conversations = Conversation.objects.filter(owner=user)
    query = (query or "").strip()
    if query:
        conversations = conversations.filter(
            Q(title__icontains=query) | Q(messages__content__icontains=query)).distinct()
    entries = [{"conversation": c, "snippet": ""}
               for c in conversations.select_related("api_key").order_by("-updated_at")[:MAX_RESULTS]]
    if query:
        # Show where a chat matched when its title does not say.
        for entry in entries:
            if query.lower() not in entry["conversation"].title.lower():
                hit = (Message.objects.filter(conversation=entry["conversation"], content__icontains=query)
                       .order_by("created_at").values_list("content", flat=True).first())
                entry["snippet"] = snippet(hit or "", query)
    return entries


def age_label(when, now):
    today = timezone.localtime(now).date()
    day = timezone.localtime(when).date()
    if day >= today:
        return "Today"
    if day == today - timedelta(days=1):
        return "Yesterday"
    if day > today - timedelta(days=7):
        return "Previous 7 days"
    if day > today - timedelta(days=30):
        return "Previous 30 days"
    return "Older"


def grouped(entries, now=None):
    now = now or timezone.now()
    groups = []
    for entry in entries:
        label = age_label(entry["conversation"].updated_at, now)
        if not groups or groups[-1]["label"] != label:
            groups.append({"label": label, "entries": []})
        groups[-1]["entries"].append(entry)
    return groups


def sidebar_context(user, query="", current=None):
    entries = search(user, query)
    return {"groups": grouped(entries), "query": (query or "").strip(), "count": len(entries),
            "current_id": getattr(current, "pk", current)}
