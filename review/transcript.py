"""A conversation as the admin transcript shows it: one branch in order, with every turn's
other versions (siblings) and every branch's leaf reachable by a link."""
from chat.markdown import render_markdown
from chat.models import Message, ToolCall


def queue_wait(message):
    """Seconds between the message being queued and a worker starting it, derived from what is
    stored: the worker measures ``ttft`` from when it started the job, and ``tokens_per_second`` as
    (tokens - 1) over the time from the first token to the end, which is when ``finished_at`` is
    written. So the rest of finished_at - created_at is the wait for a worker. (Waiting for a running
    slot in a busy engine is inside ttft.) None when the message did not finish with a first token."""
    if message.finished_at is None or message.ttft is None:
        return None
    generating = 0.0
    if message.tokens_per_second and (message.completion_tokens or 0) > 1:
        generating = (message.completion_tokens - 1) / message.tokens_per_second
    wait = (message.finished_at - message.created_at).total_seconds() - message.ttft - generating
    return max(wait, 0.0)


class Tree:
    def __init__(self, conversation):
        self.conversation = conversation
        self.messages = list(Message.objects.filter(conversation_id=conversation.pk).order_by("created_at", "id"))
        self.by_id = {m.id: m for m in self.messages}
        self.children = {}
        for m in self.messages:
            self.children.setdefault(m.parent_id, []).append(m)

    def latest_leaf(self, message):
        """The newest branch through ``message``: follow the newest child down to a leaf."""
        while self.children.get(message.id):
            message = self.children[message.id][-1]
        return message

    def leaf_for(self, message_id=None):
        """The leaf a transcript shows: under the given message, else the conversation's current
        leaf, else the newest branch. None for an empty conversation."""
        if message_id is not None:
            return self.latest_leaf(self.by_id[message_id])
        current = self.by_id.get(self.conversation.current_leaf_id)
        if current is not None:
            return self.latest_leaf(current)
        roots = self.children.get(None)
        return self.latest_leaf(roots[-1]) if roots else None

    def path(self, leaf):
        path, node = [], leaf
        while node is not None:
            path.append(node)
            node = self.by_id.get(node.parent_id)
        return path[::-1]

    def leaves(self):
        return [m for m in self.messages if not self.children.get(m.id)]

    def siblings(self, message):
        """Versions of this turn: same parent, same role (as the chat page counts them)."""
        return [m for m in self.children.get(message.parent_id, []) if m.role == message.role]


def transcript_items(tree, leaf, with_text):
    """The turns of the branch ending at ``leaf``. Each answer's tool calls come along; their
    arguments and results are shown only ``with_text`` (the template's business)."""
    path = tree.path(leaf) if leaf else []
    calls = {}
    for call in ToolCall.objects.filter(message_id__in=[m.id for m in path]).order_by("message_id", "index"):
        calls.setdefault(call.message_id, []).append(call)
    items = []
    for m in path:
        siblings = tree.siblings(m)
        index = siblings.index(m)
        items.append({
            "m": m,
            "html": render_markdown(m.content) if with_text and m.role == Message.Role.ASSISTANT else None,
            "queue_wait": queue_wait(m) if m.role == Message.Role.ASSISTANT else None,
            "calls": calls.get(m.id, []),
            "position": index + 1,
            "versions": [{"number": i + 1, "leaf": tree.latest_leaf(s).id, "current": s.id == m.id}
                         for i, s in enumerate(siblings)],
            "prev_leaf": tree.latest_leaf(siblings[index - 1]).id if index > 0 else None,
            "next_leaf": tree.latest_leaf(siblings[index + 1]).id if index + 1 < len(siblings) else None,
        })
    return items
