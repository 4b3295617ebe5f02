"""Conversations and their messages, one row per message; branches through ``parent``."""
from django.conf import settings
from django.db import models
from django.utils import timezone

from .generation_options import GenerationOptions


def conversation_group(conversation_id):
    """The channel-layer group of a conversation: its open tabs and the API requests that follow
    its answers, to which its generations' events, tool updates and re-checks are sent."""
    return f"conv.{conversation_id}"


class Conversation(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, default="New chat")
    model = models.CharField(max_length=100)
    system_prompt = models.TextField(blank=True, default="")
    temperature = models.FloatField(default=0.7)
    top_p = models.FloatField(default=0.95)
    max_tokens = models.PositiveIntegerField(default=1024)
    thinking = models.BooleanField(default=True)
    # Tools the model may call in this chat (names from inference.tool_runner); empty: tools off.
    tools = models.JSONField(default=list, blank=True)
    # "auto": the model decides; "required": the first answer of each turn is a call.
    tool_choice = models.CharField(max_length=8, default="auto",
                                   choices=[("auto", "when the model decides"), ("required", "before every answer")])
    # Each call waits for the user's Approve or Deny.
    tools_ask = models.BooleanField(default=False)
    # The user's IANA time zone as their browser reports it (tools such as current_time read it).
    time_zone = models.CharField(max_length=64, default="UTC")
    # What made it: the chat page, the OpenAI-compatible API (with the key's name) or a batch job.
    source = models.CharField(max_length=8, default="chat",
                              choices=[("chat", "chat"), ("api", "API"), ("batch", "batch")])
    api_key = models.ForeignKey("api.ApiKey", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="conversations")
    # The message at the tip of the branch being shown; older branches stay reachable.
    current_leaf = models.ForeignKey("Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Kept chats are exempt from the retention policy (SMOLSITE_RETENTION_DAYS).
    kept = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["owner", "-updated_at"])]

    def __str__(self):
        return self.title

    @property
    def group_name(self):
        return conversation_group(self.pk)

    def touch(self):
        self.updated_at = timezone.now()
        Conversation.objects.filter(pk=self.pk).update(updated_at=self.updated_at)

    def branch(self, leaf=None):
        """Messages from the root to ``leaf`` (default: the current leaf), oldest first."""
        leaf = leaf or self.current_leaf
        if leaf is None:
            return []
        by_id = {m.id: m for m in self.messages.all()}
        path, node = [], by_id.get(leaf.id)
        while node is not None:
            path.append(node)
            node = by_id.get(node.parent_id)
        return path[::-1]


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        PENDING = "pending"
        STREAMING = "streaming"
        DONE = "done"
        STOPPED = "stopped"
        ERROR = "error"
        INTERRUPTED = "interrupted"

    ACTIVE = (Status.PENDING, Status.STREAMING)

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True, default="")
    reasoning = models.TextField(blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DONE)
    error = models.TextField(blank=True, default="")
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    # Prompt tokens the worker already held for this user (not prefilled again); admins and the
    # owner's API usage see it, other users never do.
    cached_tokens = models.PositiveIntegerField(null=True, blank=True)
    ttft = models.FloatField(null=True, blank=True, help_text="seconds to the first token")
    tokens_per_second = models.FloatField(null=True, blank=True)
    reasoning_seconds = models.FloatField(null=True, blank=True)
    dropped_turns = models.PositiveIntegerField(default=0)
    finish_reason = models.CharField(max_length=16, blank=True, default="",
                                     help_text="stop (end of turn), length (max tokens) or stopped")
    model_name = models.CharField(max_length=100, blank=True, default="")
    backend_name = models.CharField(max_length=100, blank=True, default="")
    # The worker that claimed the message (or, while pending, the one it was routed to).
    worker_id = models.CharField(max_length=200, blank=True, default="")
    # The last streamed event folded into ``content``/``reasoning``: resuming clients replay after it.
    stream_seq = models.PositiveIntegerField(default=0)
    # What it is generated with beyond the conversation's settings, and notes on it: read and
    # written through ``generation_options`` (chat.generation_options.GenerationOptions).
    options = models.JSONField(default=dict, blank=True)
    # Tokens this generation may still use (its max tokens), counted against the owner's token
    # quotas while it is pending or streaming.
    reserved_tokens = models.PositiveIntegerField(default=0)
    # Admin review: a flag with a note, set by staff in the admin.
    flagged = models.BooleanField(default=False, db_index=True)
    review_note = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["conversation", "created_at"]),
            models.Index(fields=["status", "updated_at"]),
        ]

    def __str__(self):
        return f"{self.role} #{self.pk}"

    @property
    def generation_options(self):
        """``options``, typed: a copy (save it with ``options=....to_dict()``)."""
        return GenerationOptions.from_dict(self.options)

    @property
    def is_active(self):
        return self.status in self.ACTIVE

    def siblings(self):
        return Message.objects.filter(conversation_id=self.conversation_id, parent_id=self.parent_id,
                                      role=self.role).order_by("created_at", "id")


class ToolCall(models.Model):
    """A call an answer asked for, and what came of it. The answer's text never holds its calls:
    they are rows, kept with the answer's branch, shown as cards, exported and reviewed under
    the admin's privacy switch like message text."""

    class Status(models.TextChoices):
        REQUESTED = "requested"  # an API client's to run (its result arrives as a tool message)
        PENDING = "pending"  # the server will run it
        AWAITING = "awaiting", "awaiting approval"
        RUNNING = "running"
        OK = "ok"
        ERROR = "error"
        TIMEOUT = "timeout"
        DENIED = "denied"
        STOPPED = "stopped"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="tool_calls")
    index = models.PositiveIntegerField(default=0)
    call_id = models.CharField(max_length=64)
    name = models.CharField(max_length=64)
    arguments = models.TextField(default="{}")  # JSON text, as the model wrote it
    output = models.TextField(blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.REQUESTED)
    duration = models.FloatField(null=True, blank=True, help_text="seconds the tool ran")
    created_at = models.DateTimeField(default=timezone.now)
    # When its status last changed (the reaper ends calls stuck queued or running long after).
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["message_id", "index"]
        constraints = [models.UniqueConstraint(fields=["message", "index"], name="one_call_per_index")]

    def __str__(self):
        return f"{self.name} ({self.status}) #{self.pk}"

    BUSY = (Status.PENDING, Status.AWAITING, Status.RUNNING)
    ENDED = (Status.OK, Status.ERROR, Status.TIMEOUT, Status.DENIED, Status.STOPPED)

    def as_template_call(self):
        return {"id": self.call_id, "name": self.name, "arguments": self.arguments}

    def result_text(self):
        """What the model is told of this call (its tool message)."""
        if self.status == self.Status.OK:
            return self.output
        if self.status == self.Status.DENIED:
            return "The user denied this call: it was not run."
        if self.status == self.Status.TIMEOUT:
            return "The tool did not finish in time." + (f"\n{self.output}" if self.output else "")
        if self.status == self.Status.STOPPED:
            return "The call was stopped before it finished."
        return "Error: " + (self.output or "the tool failed.")

    @property
    def is_busy(self):
        return self.status in self.BUSY


def generations_in_flight(user_id):
    """The user's answers pending or streaming, each holding its ``reserved_tokens`` (usage.quotas
    counts them: registered by chat.apps)."""
    return Message.objects.filter(conversation__owner_id=user_id, role=Message.Role.ASSISTANT,
                                  status__in=Message.ACTIVE)
