"""The job store behind the generation service: a job is an assistant Message row."""
import threading

from django.db import connection, transaction
from django.utils import timezone

from inference import toolcalls
from inference.backends import GenerationRequest, SamplingParams
from inference.service import JobStore
from usage import ledger

from .generation_options import GenerationOptions, given
from .models import Conversation, Message, ToolCall


def history_for(message):
    """The turns a reply to ``message.parent`` is conditioned on: the branch above it, without
    failed or empty answers (an answer that asked for calls stays, with its calls and their
    results as tool turns). A result an API client sent for a call made before its request is
    kept on that request's answers (``options["tool_results"]``), not on the call, because each
    branch going on from the call may answer it differently; it counts only in its own branch."""
    conversation = message.conversation
    branch = conversation.branch(message.parent) if message.parent_id else []
    calls = {}
    for call in ToolCall.objects.filter(message__in=[m.pk for m in branch if m.role == Message.Role.ASSISTANT]):
        calls.setdefault(call.message_id, []).append(call)
    answered = {}
    for m in [*branch, message]:
        for result in GenerationOptions.from_dict(getattr(m, "options", None)).tool_results or ():
            answered[result["call_id"]] = result["output"]
    turns = []
    for m in branch:
        asked = calls.get(m.pk, [])
        if m.role == Message.Role.ASSISTANT and (m.status == Message.Status.ERROR or not (m.content or asked)):
            continue
        turn = {"role": m.role, "content": m.content, "reasoning": m.reasoning}
        if asked:
            turn["tool_calls"] = [c.as_template_call() for c in asked]
        turns.append(turn)
        for c in asked:
            if c.call_id in answered:
                turns.append({"role": "tool", "tool_call_id": c.call_id, "name": c.name, "content": answered[c.call_id]})
            elif c.status in ToolCall.ENDED:
                turns.append({"role": "tool", "tool_call_id": c.call_id, "name": c.name, "content": c.result_text()})
    return turns


def save_tool_calls(message_id, calls, status=ToolCall.Status.REQUESTED):
    """Rows for the calls a finished answer asked for (``calls``: inference.toolcalls.parse)."""
    ToolCall.objects.bulk_create([
        ToolCall(message_id=message_id, index=i, call_id=toolcalls.call_id(message_id, i), name=c["name"],
                 arguments=c["arguments"], status=status) for i, c in enumerate(calls)])


def _drop_broken_connection():
    """A worker thread has no request cycle to drop a connection the database closed (it restarted):
    without this, every later save of this generation would fail on the dead connection."""
    if connection.connection is not None and connection.errors_occurred and not connection.in_atomic_block:
        if connection.is_usable():
            connection.errors_occurred = False
        else:
            connection.close()


# Who each generation this process claimed charges (usage.ledger.payer), until it finishes: the
# ledger row is written from it when the chat is deleted mid-answer.
_payers = {}
_payers_lock = threading.Lock()


def _charge(job_id, result, now, fallback=None):
    """The usage ledger row of a finished generation (usage.ledger.record), given its message as
    stored now (None once its chat was deleted)."""
    message = Message.objects.select_related("conversation", "conversation__api_key").filter(pk=job_id).first()
    return ledger.record(job_id, message, result, now=now, fallback=fallback)


class MessageStore(JobStore):
    def claim(self, job_id, worker_id):
        updated = Message.objects.filter(pk=job_id, status=Message.Status.PENDING).update(
            status=Message.Status.STREAMING, worker_id=worker_id, updated_at=timezone.now())
        if not updated:
            return None
        message = Message.objects.select_related("conversation", "conversation__api_key").get(pk=job_id)
        conv = message.conversation
        with _payers_lock:
            _payers[str(job_id)] = ledger.payer(message)
        # Per-request options (API requests): they override the conversation's settings.
        opts = message.generation_options
        messages = opts.messages if isinstance(opts.messages, list) else history_for(message)
        return GenerationRequest(
            id=str(message.pk),
            model=message.model_name or conv.model,
            messages=messages,
            system_prompt=given(opts.system_prompt, conv.system_prompt),
            params=SamplingParams(temperature=given(opts.temperature, conv.temperature),
                                  top_p=given(opts.top_p, conv.top_p),
                                  max_tokens=given(opts.max_tokens, conv.max_tokens),
                                  seed=opts.seed, stop=list(opts.stop or [])),
            thinking=conv.thinking,
            group=conv.group_name,
            session_key=f"conversation-{conv.pk}",
            # Background work (batches) is queued as its own "user": the engine's per-user cap
            # then never makes a person's chat wait behind their own batch.
            user_key=f"user-{conv.owner_id}" + (":batch" if opts.priority == "background" else ""),
            priority=given(opts.priority, "interactive"),
            grammar=given(opts.grammar, ""),
            raw_prompt=messages[-1]["content"] if opts.raw and messages else None,
            truncate_history=given(opts.truncate, True),
            tools=list(opts.tools or []),
            grammar_waits_for_call=bool(opts.grammar_waits_for_call),
        )

    def save_progress(self, job_id, text, reasoning, seq):
        _drop_broken_connection()
        Message.objects.filter(pk=job_id, status=Message.Status.STREAMING).update(
            content=text, reasoning=reasoning, stream_seq=seq, updated_at=timezone.now())

    def finish(self, job_id, result):
        """Save the end of a generation; False when the row had already been ended elsewhere
        (the reaper marked it interrupted and told the tabs, or it was deleted): it stays so."""
        _drop_broken_connection()
        now = timezone.now()
        with _payers_lock:
            payer = _payers.pop(str(job_id), None)
        with transaction.atomic():
            saved = Message.objects.filter(pk=job_id, status=Message.Status.STREAMING).update(
                content=result.text,
                reasoning=result.reasoning,
                status=result.status,
                error=result.error,
                prompt_tokens=result.prompt_tokens or None,
                completion_tokens=result.completion_tokens,
                cached_tokens=result.cached_tokens,
                ttft=result.ttft,
                tokens_per_second=result.tokens_per_second,
                reasoning_seconds=result.reasoning_seconds,
                dropped_turns=result.dropped_turns,
                finish_reason=result.finish_reason,
                backend_name=result.backend,
                stream_seq=result.seq,
                updated_at=now,
                finished_at=now,
            )
            if not saved:
                # Ended elsewhere (the reaper) or deleted: the tokens were used all the same.
                _charge(job_id, result, now, fallback=payer)
                return False
            Conversation.objects.filter(messages__pk=job_id).update(updated_at=now)
            if result.tool_calls:
                save_tool_calls(job_id, result.tool_calls, self._call_status(job_id, result))
            # The usage ledger: once per generation, in the transaction that ends it (so its
            # reserved tokens and its used tokens are never both, or neither, counted).
            _charge(job_id, result, now)
        return True

    @staticmethod
    def _call_status(job_id, result):
        """API calls are the client's to run; a chat's run here (chat.agent), once approved when the
        chat asks first. The calls of an answer that did not end well are never run."""
        row = Message.objects.filter(pk=job_id).values("options", "conversation__tools_ask").first()
        if row is None or GenerationOptions.from_dict(row["options"]).tool_round is None:
            return ToolCall.Status.REQUESTED
        if result.status != Message.Status.DONE:
            return ToolCall.Status.STOPPED
        return ToolCall.Status.AWAITING if row["conversation__tools_ask"] else ToolCall.Status.PENDING

    def after_finish(self, job_id, result, worker_id=""):
        if result.tool_calls:
            from . import agent

            agent.advance(int(job_id), worker_id)
