"""search_my_chats: the user's own earlier conversations, by the text of their messages.

Every query filters by the owner in the database query itself (chat.sidebar's search, then the
conversations and messages read again with the same owner), so no code path can return another
user's text. The chat the model is answering in is left out: it already has that text.
"""
from django.urls import reverse

DEFAULT_LIMIT = 5
SNIPPET_CHARS = 200

SCHEMA = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": 200,
                  "description": "Words to look for in the user's earlier chats."},
        # An enum, not minimum/maximum: the call grammar can enforce it (api.schema refuses bounds).
        "limit": {"type": "integer", "enum": list(range(1, 11)),
                  "description": f"How many chats to return, 1 to 10 (default {DEFAULT_LIMIT})."},
    },
    "required": ["query"],
    "additionalProperties": False,
}
DESCRIPTION = ("Search the user's own earlier chats for words; returns the matching chats, newest first, "
               "each with its title, a snippet around the match and a link.")


def search_my_chats(arguments, context):
    # Imported here: plugins load (and import this module) before Django's apps may be ready.
    from chat.models import Conversation, Message
    from chat.sidebar import _message_hits, clean_query, snippet

    query = clean_query(arguments["query"])
    if not query:
        raise ValueError("the query is empty")
    limit = arguments.get("limit") or DEFAULT_LIMIT
    owner = context.user_id
    if not owner:  # a search for nobody must not become a search without an owner filter
        raise ValueError("this tool needs the chat's owner")
    newest = {}  # conversation id -> its newest matching message (hits come newest first)
    for conversation_id, message_id in _message_hits(owner, query):
        if conversation_id != context.conversation_id:
            newest.setdefault(conversation_id, message_id)
    # Batch lines are conversations too, but not chats the user can open from the sidebar.
    conversations = {c.pk: c for c in Conversation.objects.filter(owner_id=owner, pk__in=list(newest))
                     .exclude(source="batch").only("pk", "title", "updated_at")}
    chosen = [pk for pk in newest if pk in conversations][:limit]
    texts = dict(Message.objects.filter(conversation__owner_id=owner, pk__in=[newest[pk] for pk in chosen])
                 .values_list("pk", "content"))
    return [{"title": conversations[pk].title,
             "snippet": snippet(texts.get(newest[pk], ""), query, SNIPPET_CHARS),
             "date": conversations[pk].updated_at.date().isoformat(),
             "url": reverse("chat:conversation", args=[pk])}
            for pk in chosen]
