"""Server-rendered fragments shared by the views and the websocket consumer."""
from django.template.loader import render_to_string

from inference.model_configs import get_model, model_features, UnknownModel

from .markdown import render_markdown
from .models import Message, ToolCall


def message_context(message, siblings=None, calls=None, continued=None):
    """``calls``: the answer's ToolCall rows; ``continued``: whether it continues a tool loop (its
    parent is an answer). Read from the database when not given."""
    siblings = list(siblings if siblings is not None else message.siblings().values_list("id", flat=True))
    index = siblings.index(message.id) if message.id in siblings else 0
    if message.role == Message.Role.ASSISTANT:
        if calls is None:
            calls = list(ToolCall.objects.filter(message_id=message.id))
        if continued is None:
            continued = Message.objects.filter(pk=message.parent_id, role=Message.Role.ASSISTANT).exists()
    options = message.generation_options
    return {
        "m": message,
        "calls": calls or [],
        "continued": bool(continued),
        "tool_note": options.tool_note or "",
        "tools_stopped": bool(options.tool_stopped) or any(c.status == ToolCall.Status.STOPPED
                                                                  for c in calls or []),
        # Rendered when the template is (templates call callables): the consumer builds the context
        # on the shared database thread and renders a whole answer's Markdown on another.
        "html": (lambda: render_markdown(message.content)) if message.role == Message.Role.ASSISTANT else None,
        "sibling_ids": siblings,
        "sibling_index": index + 1,
        "prev_sibling": siblings[index - 1] if index > 0 else None,
        "next_sibling": siblings[index + 1] if index + 1 < len(siblings) else None,
    }


def render_message(message, user=None):
    return render_to_string("chat/_message.html", message_context(message), request=None)


def thread_context(conversation):
    branch = conversation.branch()
    by_parent = {}
    for m in Message.objects.filter(conversation_id=conversation.pk).only("id", "parent_id", "role", "created_at") \
            .order_by("created_at", "id"):
        by_parent.setdefault((m.parent_id, m.role), []).append(m.id)
    calls = {}
    for call in ToolCall.objects.filter(message__in=[m.pk for m in branch if m.role == Message.Role.ASSISTANT]):
        calls.setdefault(call.message_id, []).append(call)
    roles = {m.pk: m.role for m in branch}
    items = [message_context(m, by_parent.get((m.parent_id, m.role), [m.id]), calls=calls.get(m.pk, []),
                             continued=roles.get(m.parent_id) == Message.Role.ASSISTANT) for m in branch]
    return {"conversation": conversation, "items": items,
            "last_assistant": next((m for m in reversed(branch) if m.role == Message.Role.ASSISTANT), None)}


def render_thread(conversation, user=None):
    return render_to_string("chat/_thread.html", thread_context(conversation))


def conversation_features(conversation):
    try:
        return model_features(get_model(conversation.model))
    except UnknownModel:
        return []
