"""Message.options typed: what an answer is generated with beyond its conversation's settings,
and what the door, the tool loop and Responses note on it.

Stored as the row's JSON: ``to_dict`` writes the fields that are set (None: not set, the
conversation's or the default applies), ``from_dict`` reads them back and keeps any key it does
not know in ``extra``, so a row another version wrote loads and saves unchanged.
"""
from dataclasses import dataclass, field, fields


def given(value, default):
    """``value`` when the options set it, else ``default``."""
    return default if value is None else value


@dataclass
class GenerationOptions:
    # Who asked: "api" or "batch" (not set: the chat page). usage.ledger and the metrics plugin
    # read it from the JSON: usage sits below chat.
    source: str | None = None
    # "background": batch lines and background responses, served after people's chats.
    priority: str | None = None
    # An API request's own settings, over its conversation's (a Responses chain's turn has its own).
    system_prompt: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: list | None = None
    # The exact turns when the branch's rows cannot say them (API requests); raw: a completion's
    # prompt, with no chat template; truncate False: a prompt too long for the context fails
    # instead of losing its oldest turns.
    messages: list | None = None
    raw: bool | None = None
    truncate: bool | None = None
    # Structured output and tools (inference.structured): the grammar (from the first token, or
    # once the model opens a call) and the tools' specs.
    grammar: str | None = None
    grammar_waits_for_call: bool | None = None
    tools: list | None = None
    # The chat's tool loop (chat.agent): the answer's round, the note that ended the loop, a Stop.
    tool_round: int | None = None
    tool_note: str | None = None
    tool_stopped: bool | None = None
    # Results an API client sent for calls an earlier request made ([{"call_id", "output"}]): this
    # branch's answers to them (chat.store.history_for), kept here, not on the shared call rows.
    tool_results: list | None = None
    # When the reaper queued it a second time (chat.reaper).
    requeued_at: str | None = None
    # A Responses request's fields (api.response_store) and how many times a background one ran.
    response: dict | None = None
    runs: int | None = None
    # The end user the API client named (OpenAI's "user"): kept with the request, for admins
    # reviewing it (review.chat_admin shows the options); no generation reads it.
    user: str | None = None
    extra: dict = field(default_factory=dict)  # keys this version does not know

    @classmethod
    def from_dict(cls, data):
        rest = dict(data or {})
        known = {f.name: rest.pop(f.name) for f in fields(cls) if f.name != "extra" and f.name in rest}
        return cls(**known, extra=rest)

    def to_dict(self):
        known = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**{k: v for k, v in known.items() if v is not None}, **self.extra}
