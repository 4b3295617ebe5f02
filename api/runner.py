"""An API request's generations: the rows (made like the chat page's, in the transaction that
checks the quotas), the device queue and the conversation's event stream.

The request subscribes to the conversation's channel-layer group before anything is enqueued,
so no event can be published before it listens. Its events are followed as the chat page's are
(chat.generation.follow): a gap (a lost flush of events) is filled from the database, which the worker
writes at least once a second, and after a silence an answer that ended with no event saying so
ends here too.
"""
import asyncio
import logging
import time
import weakref
from dataclasses import dataclass, field

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction
from django.utils import timezone

from chat import actions, generation
from chat.generation.follow import has_ended
from chat.generation.rows import answer_rows
from chat.generation_options import GenerationOptions
from chat.models import Conversation, Message, ToolCall, conversation_group
from usage.quotas import reserve

from . import prompt_size

logger = logging.getLogger(__name__)

SILENCE_SECONDS = 2.0  # with no event this long, look at the rows


def create_rows(plan, key, source="api", user_id=None, priority=None, prompt_tokens=None, *, after=None, turns=None,
                response=None, move_leaf=True):
    """The conversation, its input turns and one pending answer per choice; returns
    (conversation id, [answer ids in choice order]). Raises usage.quotas.QuotaExceeded, and
    ApiError for a prompt too long for the context or too many messages (before any row).
    Batches pass ``source="batch"``, ``priority="background"`` and, without a key, ``user_id``.
    ``prompt_tokens``: what api.prompt_size.check(plan) returned, when the caller measured already.
    ``after``: an existing message of the user's to hang ``turns`` (the plan's new turns; the ones
    before them are that branch's) and the answers under, in its conversation, as a next turn there
    (a Responses chain); ``response``: a Responses request's fields, kept with each answer;
    ``move_leaf``: show the new answer in the conversation (False: the branch shown stays, as for a
    response that is not kept).

    Each answer holds back its prompt's tokens as well as its max tokens until the ledger has
    the real count: holding back only max tokens let twenty 6,000-token prompts with
    max_tokens 1 all pass a nearly spent quota."""
    user_id = key.user_id if key is not None else user_id
    if prompt_tokens is None:
        prompt_tokens = prompt_size.check(plan)
    # Choice order: each prompt (one for chat) n times.
    holds = [plan.max_tokens + prompt_tokens[i // plan.n] for i in range(plan.choices)]
    with transaction.atomic():
        reserve(user_id, sum(holds), count=plan.choices)
        top = None
        if after is not None:
            top = Message.objects.select_related("conversation").get(pk=after, conversation__owner_id=user_id)
            conv, groups = top.conversation, [turns if turns is not None else plan.turns]
            # The conversation's switch is what the worker reads (chat.store.claim): the newest turn's.
            Conversation.objects.filter(pk=conv.pk).update(thinking=plan.thinking, updated_at=timezone.now())
        elif plan.kind == "chat":
            groups = [plan.turns]
            title_text = next((t["content"] for t in reversed(plan.turns) if t["role"] == "user"), "") or "API request"
        else:
            groups = [[{"role": "user", "content": p, "reasoning": ""}] for p in plan.prompts]
            title_text = plan.prompts[0] or "API completion"
        if top is None:
            conv = Conversation.objects.create(
                owner_id=user_id, api_key=key, source=source, model=plan.model,
                title=actions.title_from(title_text) or "API request", system_prompt=plan.system_prompt,
                temperature=plan.temperature, top_p=plan.top_p, max_tokens=plan.max_tokens, thinking=plan.thinking)
        replies = []
        for turns in groups:
            parent = top
            made = set()  # calls this request's own rows hold (no other branch sees them)
            earlier = []  # results for calls rows before this request made, which other branches share
            for turn in turns:
                if turn["role"] == "tool":
                    if turn["tool_call_id"] in made:
                        _answer_call(parent, turn)  # a result is kept with the call it answers
                    else:
                        earlier.append({"call_id": turn["tool_call_id"], "output": turn["content"]})
                    continue
                parent = Message.objects.create(conversation=conv, parent=parent, role=turn["role"],
                                                content=turn["content"], reasoning=turn.get("reasoning", ""),
                                                status=Message.Status.DONE)
                if turn.get("tool_calls"):
                    ToolCall.objects.bulk_create([
                        ToolCall(message=parent, index=j, call_id=c["id"][:64], name=c["name"][:64],
                                 arguments=c["arguments"]) for j, c in enumerate(turn["tool_calls"])])
                    made.update(c["id"] for c in turn["tool_calls"])
            for i in range(plan.n):
                # The request's own settings, over the conversation's (a chain's turn may differ).
                options = GenerationOptions(
                    source=source, priority=priority or None, system_prompt=plan.system_prompt,
                    temperature=plan.temperature, top_p=plan.top_p, max_tokens=plan.max_tokens, truncate=False,
                    stop=plan.stop or None, grammar=plan.grammar or None, tools=plan.tools or None,
                    user=plan.user or None, response=response)
                if plan.seed is not None:
                    options.seed = plan.seed + i  # the n choices of one seed differ from each other
                if plan.tool_grammar:
                    options.grammar, options.grammar_waits_for_call = plan.tool_grammar, True
                if plan.kind == "completion":
                    options.raw = True
                elif plan.exact_messages is not None:
                    options.messages = plan.exact_messages
                if earlier:
                    options.tool_results = earlier  # this branch's answers (chat.store.history_for)
                replies.append(Message.objects.create(
                    conversation=conv, parent=parent, role=Message.Role.ASSISTANT, status=Message.Status.PENDING,
                    model_name=plan.model, reserved_tokens=holds[len(replies)], options=options.to_dict()))
        if move_leaf:
            conv.current_leaf = replies[0]
            conv.save(update_fields=["current_leaf"])
        return conv.pk, [r.pk for r in replies]


def _answer_call(message, turn):
    """Store a tool message's result on the call it answers (api.params checked that it answers
    one), in whichever earlier assistant row of this branch made it."""
    call = ToolCall.objects.filter(message__conversation_id=message.conversation_id,
                                   call_id=turn["tool_call_id"][:64]).order_by("-id").first()
    if call is not None:
        call.output, call.status = turn["content"], ToolCall.Status.OK
        call.save(update_fields=["output", "status"])


@dataclass
class Choice:
    """What one answer has streamed so far."""

    index: int
    message_id: int
    text: str = ""
    reasoning: str = ""
    tool_text: str = ""  # the calls as the model writes them (inference.toolcalls)
    done: bool = False
    row: dict = field(default_factory=dict)  # the finished row, with its "tool_calls"
    calls: object = None  # the streaming response's inference.toolcalls.CallStream


class Run(generation.Follower):
    """Subscribe, enqueue, then iterate ``updates()``: ("text"|"reasoning", choice, piece),
    ("queue", choice, requests ahead), ("idle", None, None) after a silence and ("done", choice,
    None) items, ending when every choice is done."""

    def __init__(self, conversation_id, message_ids, model, affinity=""):
        super().__init__()
        self.conversation_id = conversation_id
        self.affinity = affinity  # the worker that holds the conversation's tokens (scaled out)
        self.choices = [Choice(i, mid) for i, mid in enumerate(message_ids)]
        self.by_id = {c.message_id: c for c in self.choices}
        self.model = model
        self.layer = get_channel_layer()
        self.group = conversation_group(conversation_id)
        self.channel = None
        self._queue = []
        self.created = int(time.time())
        self.closed = False

    async def start(self):
        self.channel = await self.layer.new_channel("api.")
        await self.layer.group_add(self.group, self.channel)  # before the first job can publish
        for choice in self.choices:
            await generation.start(choice.message_id, self.model, self.affinity)

    @property
    def finished(self):
        return all(c.done for c in self.choices)

    async def updates(self):
        while True:
            while self._queue:
                yield self._queue.pop(0)
            if self.finished:
                return
            try:
                message = await asyncio.wait_for(self.layer.receive(self.channel), SILENCE_SECONDS)
            except asyncio.TimeoutError:
                # Only ends are taken from the rows here: a silence may be a slow layer whose
                # events are still coming, and the saved row holds no tool call being written.
                await self.check([c.message_id for c in self.choices if not c.done], catch_up=False)
                if not self.finished and not self._queue:
                    yield ("idle", None, None)  # a streaming response sends a keep-alive comment
                continue
            if message.get("type") == "gen.events":
                await self.on_events(int(message["message"]), message["events"])

    async def on_events(self, message_id, events):
        choice = self.by_id.get(message_id)
        if choice is not None and not choice.done:
            await super().on_events(message_id, events)

    async def read_saved(self, message_ids):
        return await database_sync_to_async(answer_rows)(message_ids)

    async def deliver(self, message_id, events):
        choice = self.by_id[message_id]
        for event in events:
            if event["kind"] in ("text", "reasoning", "tool") and event.get("text"):
                self._emit(choice, event["kind"], event["text"])
            elif event["kind"] == "queue":
                self._queue.append(("queue", choice, event.get("ahead", 0)))
            elif event["kind"] == "done":
                await self._finish(choice)
                return

    async def apply_saved(self, message_id, row):
        choice = self.by_id[message_id]
        if has_ended(row):
            await self._finish(choice, row)
        else:
            self._catch_up(choice, row)

    async def ended_elsewhere(self, message_id):
        await self._finish(self.by_id[message_id])  # the reaper numbers from the saved text

    async def gone(self, message_id):
        await self._finish(self.by_id[message_id])

    def _emit(self, choice, kind, piece):
        if kind == "text":
            choice.text += piece
        elif kind == "tool":
            choice.tool_text += piece
        else:
            choice.reasoning += piece
        self._queue.append((kind, choice, piece))

    def _catch_up(self, choice, row):
        for kind, have, saved in (("reasoning", choice.reasoning, row["reasoning"]),
                                  ("text", choice.text, row["content"])):
            if len(saved) > len(have) and saved.startswith(have):
                self._emit(choice, kind, saved[len(have):])

    async def _finish(self, choice, row=None):
        if choice.done:
            return
        if row is None:
            row = (await database_sync_to_async(answer_rows)([choice.message_id])).get(choice.message_id)
        if row is None:
            row = {"status": Message.Status.ERROR, "error": "The answer was deleted.", "content": choice.text,
                   "reasoning": choice.reasoning, "finish_reason": "", "prompt_tokens": 0, "completion_tokens": 0,
                   "cached_tokens": 0, "stream_seq": self.seq.get(choice.message_id, 0), "tool_calls": []}
        self._catch_up(choice, row)
        choice.row, choice.done = row, True
        self._queue.append(("done", choice, None))

    async def close(self):
        """Unsubscribe; answers still generating are stopped (nobody will read them: the client
        went away or the request failed). Once; later calls do nothing."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.channel is not None:
                await self.layer.group_discard(self.group, self.channel)
        finally:
            unfinished = [c.message_id for c in self.choices if not c.done]
            if unfinished:
                await stop_messages(unfinished)


async def stop_messages(message_ids):
    for message_id in message_ids:
        try:
            await generation.stop(message_id)
        except Exception:
            logger.exception("could not stop message %s", message_id)


def close_when_dropped(response, run):
    """Close ``run`` when ``response`` is garbage-collected without its stream having closed it
    (a client gone before the server began iterating the stream: the generator never ran)."""
    loop = asyncio.get_running_loop()

    def close(run=run, loop=loop):
        if not run.closed and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: loop.create_task(run.close()))

    weakref.finalize(response, close)
