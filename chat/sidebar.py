"""The sidebar's conversation list: a user's chats, newest first, grouped by age, optionally
filtered by a search over titles and message text.

Searching costs a bounded amount of work whatever is typed: the query is cut to
SMOLSITE_SEARCH_MAX_CHARS, and a search is three queries however many chats match. Message text is
searched through a full-text index where the database has one (PostgreSQL: words and word
prefixes, so "drag" finds "dragons", through the GIN index of migration 0005); elsewhere (SQLite)
by a scan of the user's SMOLSITE_SEARCH_SCAN_MESSAGES most recent messages only, for each word.
Either way a message matches when it has every word of the query."""
import re
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import BooleanField, Q, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Lower, StrIndex
from django.db.models.lookups import GreaterThan
from django.utils import timezone

from .models import Conversation, Message

SNIPPET_CHARS = 80
MAX_RESULTS = 200
# Matching messages read per search (newest first); their chats are the message hits.
MAX_MESSAGE_HITS = 2000
# Without an index, the words of a query each scan the recent messages: at most this many words.
MAX_SCAN_WORDS = 4
# The full-text index covers this much of each message (a tsvector has a 1 MB limit, and an
# over-long text must never make saving a message fail). Must match migration 0005's index.
FTS_CHARS = 100_000
FTS_SQL = (f"to_tsvector('simple'::regconfig, left({{table}}.{{column}}, {FTS_CHARS})) @@ "
           "(to_tsquery('simple'::regconfig, %s) || plainto_tsquery('simple'::regconfig, %s))")


def clean_query(query):
    """The query as searched: NUL characters dropped (PostgreSQL text cannot hold them), spaces
    trimmed, at most SMOLSITE_SEARCH_MAX_CHARS characters."""
    query = (query or "").replace("\x00", "").strip()
    return query[:settings.SMOLSITE_SEARCH_MAX_CHARS].strip()


def snippet(text, query, width=SNIPPET_CHARS):
    """A window of ``text`` around the first match of ``query`` (or of its first word found), on
    one line."""
    text = " ".join(text.split())
    lowered = text.lower()
    at = lowered.find(query.lower())
    if at < 0:
        for word in re.findall(r"[^\W_]+", query.lower()):
            at = lowered.find(word)
            if at >= 0:
                break
    if at < 0:
        return text[:width]
    start = max(0, at - width // 3)
    end = min(len(text), start + width)
    return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")


def contains(field, text):
    """Case-insensitive substring test as instr(lower(field), lower(text)): linear in the text,
    where LIKE '%…%' (icontains) costs the text's length times the query's in the worst case."""
    return GreaterThan(StrIndex(Lower(field), Lower(Value(text))), 0)


def prefix_tsquery(query):
    """Every word of ``query`` as a prefix, all required: "drag fir" -> 'drag':* & 'fir':*."""
    words = re.findall(r"[^\W_]+", query)
    return " & ".join("'" + w.replace("\\", "").replace("'", "") + "':*" for w in words)


def _message_hits(user, query):
    """(conversation id, message id) of the user's messages matching ``query``, newest first,
    at most MAX_MESSAGE_HITS."""
    messages = Message.objects.filter(conversation__owner=user)
    if connection.vendor == "postgresql":
        prefix = prefix_tsquery(query)
        if not prefix:
            return []  # nothing a word index can match (punctuation only)
        qn = connection.ops.quote_name
        match = RawSQL(FTS_SQL.format(table=qn(Message._meta.db_table), column=qn("content")), [prefix, query],
                       output_field=BooleanField())
        messages = messages.filter(match)
    else:
        recent = Message.objects.filter(conversation__owner=user).order_by("-id").values("id")[
            :settings.SMOLSITE_SEARCH_SCAN_MESSAGES]
        # Like the index: every word, anywhere (or, with no words, the query as typed).
        words = re.findall(r"[^\W_]+", query)[:MAX_SCAN_WORDS] or [query]
        messages = messages.filter(id__in=recent, *[contains("content", w) for w in words])
    return list(messages.order_by("-id").values_list("conversation_id", "id")[:MAX_MESSAGE_HITS])


def search(user, query=""):
    # A batch's lines are conversations too, thousands of them: the Batches page shows those.
    conversations = Conversation.objects.filter(owner=user).exclude(source="batch")
    query = clean_query(query)
    first_hit = {}  # conversation id -> its earliest matching message among the hits
    if query:
        for conversation_id, message_id in _message_hits(user, query):
            first_hit[conversation_id] = min(message_id, first_hit.get(conversation_id, message_id))
        conversations = conversations.filter(Q(contains("title", query)) | Q(pk__in=list(first_hit)))
    entries = [{"conversation": c, "snippet": ""}
               for c in conversations.select_related("api_key").order_by("-updated_at")[:MAX_RESULTS]]
    if query:
        # Show where a chat matched when its title does not say.
        wanted = {first_hit[e["conversation"].pk]: e for e in entries
                  if query.lower() not in e["conversation"].title.lower() and e["conversation"].pk in first_hit}
        for message_id, content in Message.objects.filter(pk__in=list(wanted)).values_list("pk", "content"):
            wanted[message_id]["snippet"] = snippet(content, query)
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
    return {"groups": grouped(entries), "query": clean_query(query), "count": len(entries),
            "current_id": getattr(current, "pk", current)}
