"""The Responses API's objects: a response (from its answer row) and the streamed events.

A response names its answer row (``resp_<message id>``); its output items are the row's
reasoning (``rs_``), its text (``msg_``) and its tool calls (``fc_``, with the calls' own
``call_…`` ids), in that order, as the model wrote them.
"""
from inference import toolcalls

from .response_params import response_id


def status_of(row, meta):
    """The response's status from its answer row's (chat.models.Message.Status)."""
    status = row.get("status")
    if status == "pending":
        return "queued" if meta.get("background") else "in_progress"
    if status == "streaming":
        return "in_progress"
    if status == "done":
        return "incomplete" if row.get("finish_reason") == "length" else "completed"
    if status == "stopped":
        return "cancelled"
    return "failed"


def _reasoning_item(mid, text, done=True):
    return {"type": "reasoning", "id": f"rs_{mid}", "summary": [],
            "content": [{"type": "reasoning_text", "text": text}] if done else [],
            "status": "completed" if done else "in_progress"}


def _text_part(text):
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(mid, text, done=True, status="completed"):
    return {"type": "message", "id": f"msg_{mid}", "role": "assistant", "status": status if done else "in_progress",
            "content": [_text_part(text)] if done else []}


def _call_item(mid, index, call_id, name, arguments, done=True):
    return {"type": "function_call", "id": f"fc_{mid}_{index}", "call_id": call_id, "name": name,
            "arguments": arguments, "status": "completed" if done else "in_progress"}


def output_items(mid, row, finished=True):
    items = []
    if row.get("reasoning"):
        items.append(_reasoning_item(mid, row["reasoning"]))
    calls = row.get("tool_calls") or []
    if row.get("content") or (finished and not calls):
        state = "incomplete" if row.get("finish_reason") == "length" else "completed"
        items.append(_message_item(mid, row.get("content") or "", status=state if finished else "in_progress"))
    for i, call in enumerate(calls):
        items.append(_call_item(mid, i, call["id"], call["name"], call["arguments"]))
    return items


def usage(row, reasoning_tokens=0):
    prompt, completion = row.get("prompt_tokens") or 0, row.get("completion_tokens") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": row.get("cached_tokens") or 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": prompt + completion}


def response_object(mid, model, created_at, row, meta, *, reasoning_tokens=0, completed_at=None, error=None):
    """The response object of answer ``mid``: ``row`` its fields (chat.models.Message's, with its
    "tool_calls"), ``meta`` what the request asked for (api.response_params.parse's)."""
    status = status_of(row, meta)
    finished = status not in ("queued", "in_progress")
    if status == "failed" and error is None:
        error = {"code": "server_error", "message": row.get("error") or "The generation failed."}
    output = output_items(mid, row, finished) if (finished or row.get("content") or row.get("reasoning")) else []
    return {
        "id": response_id(mid), "object": "response", "created_at": created_at, "status": status,
        "background": bool(meta.get("background")), "error": error if status == "failed" else None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": meta.get("instructions"), "max_output_tokens": meta.get("max_output_tokens"),
        "metadata": meta.get("metadata") or {}, "model": model, "output": output,
        "output_text": "".join(part["text"] for item in output if item["type"] == "message"
                               for part in item["content"]),
        "parallel_tool_calls": meta.get("parallel_tool_calls", True),
        "previous_response_id": meta.get("previous_response_id"), "reasoning": meta.get("reasoning"),
        "store": meta.get("store", True), "temperature": meta.get("temperature"), "text": meta.get("text"),
        "tool_choice": meta.get("tool_choice") or "none", "tools": meta.get("tools") or [],
        "top_p": meta.get("top_p"), "truncation": "disabled", "user": meta.get("user"),
        "completed_at": completed_at if status == "completed" else None,
        "usage": usage(row, reasoning_tokens) if finished else None,
    }


class EventStream:
    """The streamed events of one response, numbered: ``opening``, then ``feed`` for each piece the
    answer streams (reasoning, text, tool-call text), then ``closing`` with the finished row and
    object. The reasoning item closes when the answer begins; the message and the calls close
    when the answer ends, with the saved text and each call's final arguments (the runner has
    caught the streamed text up with the saved text by then, api.runner.Run._catch_up)."""

    def __init__(self, mid):
        self.mid = mid
        self.seq = -1
        self.items = []  # [kind, item] by output index
        self.reasoning_at = self.message_at = None  # output indexes
        self.reasoning_open = False
        self.calls = toolcalls.CallStream()
        self.call_at = {}  # a call's number in the answer -> its output index
        self.reasoning = self.text = ""

    def event(self, kind, **fields):
        self.seq += 1
        return {"type": kind, "sequence_number": self.seq, **fields}

    def opening(self, snapshot):
        yield self.event("response.created", response=snapshot)
        yield self.event("response.in_progress", response=snapshot)

    def _add(self, kind, item, part=None):
        index = len(self.items)
        self.items.append([kind, item])
        yield self.event("response.output_item.added", output_index=index, item=item)
        if part is not None:
            yield self.event("response.content_part.added", output_index=index, item_id=item["id"],
                             content_index=0, part=part)

    def feed(self, kind, piece):
        if kind == "reasoning":
            if self.reasoning_at is None:
                self.reasoning_at, self.reasoning_open = len(self.items), True
                yield from self._add("reasoning", _reasoning_item(self.mid, "", done=False),
                                     {"type": "reasoning_text", "text": ""})
            self.reasoning += piece
            yield self.event("response.reasoning_text.delta", output_index=self.reasoning_at,
                             item_id=f"rs_{self.mid}", content_index=0, delta=piece)
            return
        yield from self._end_reasoning()
        if kind == "text":
            if self.message_at is None:
                self.message_at = len(self.items)
                yield from self._add("message", _message_item(self.mid, "", done=False), _text_part(""))
            self.text += piece
            yield self.event("response.output_text.delta", output_index=self.message_at, item_id=f"msg_{self.mid}",
                             content_index=0, delta=piece, logprobs=[])
        else:
            for number, name, fragment in self.calls.feed(piece):
                yield from self._call_delta(number, name, fragment)

    def _call_delta(self, number, name, fragment):
        if name is not None:
            self.call_at[number] = len(self.items)
            yield from self._add("call", _call_item(self.mid, number, toolcalls.call_id(self.mid, number), name, "",
                                                    done=False))
        if fragment:
            yield self.event("response.function_call_arguments.delta", output_index=self.call_at[number],
                             item_id=f"fc_{self.mid}_{number}", delta=fragment)

    def _end_reasoning(self, row=None):
        if not self.reasoning_open:
            return
        self.reasoning_open = False
        index, text = self.reasoning_at, (row or {}).get("reasoning") or self.reasoning
        yield self.event("response.reasoning_text.done", output_index=index, item_id=f"rs_{self.mid}",
                         content_index=0, text=text)
        yield self.event("response.content_part.done", output_index=index, item_id=f"rs_{self.mid}",
                         content_index=0, part={"type": "reasoning_text", "text": text})
        yield self.event("response.output_item.done", output_index=index, item=_reasoning_item(self.mid, text))

    def _end_message(self, row):
        index = self.message_at
        text = row.get("content") or self.text
        state = "incomplete" if row.get("finish_reason") == "length" else "completed"
        yield self.event("response.output_text.done", output_index=index, item_id=f"msg_{self.mid}",
                         content_index=0, text=text, logprobs=[])
        yield self.event("response.content_part.done", output_index=index, item_id=f"msg_{self.mid}",
                         content_index=0, part=_text_part(text))
        yield self.event("response.output_item.done", output_index=index,
                         item=_message_item(self.mid, text, status=state))

    def _end_call(self, number, row):
        index = self.call_at[number]
        calls = row.get("tool_calls") or []
        item_id = f"fc_{self.mid}_{number}"
        if number >= len(calls):  # cut short by max tokens: the saved answer has no such call
            sent = self.calls.sent_for(number) or ""
            name = self.items[index][1]["name"]
            item = {**_call_item(self.mid, number, toolcalls.call_id(self.mid, number), name, sent),
                    "status": "incomplete"}
            yield self.event("response.output_item.done", output_index=index, item=item)
            return
        call = calls[number]
        sent = self.calls.sent_for(number) or ""
        if call["arguments"].startswith(sent) and len(call["arguments"]) > len(sent):
            yield self.event("response.function_call_arguments.delta", output_index=index, item_id=item_id,
                             delta=call["arguments"][len(sent):])
        yield self.event("response.function_call_arguments.done", output_index=index, item_id=item_id,
                         name=call["name"], arguments=call["arguments"])
        yield self.event("response.output_item.done", output_index=index,
                         item=_call_item(self.mid, number, call["id"], call["name"], call["arguments"]))

    def closing(self, row, final):
        """The events after the answer ended, ``row`` its saved fields and ``final`` the finished
        response object: the open items closed (calls the stream missed added first), then
        response.completed, .incomplete or .failed."""
        for number, call in enumerate(row.get("tool_calls") or []):
            if number not in self.call_at:
                yield from self._end_reasoning(row)
                yield from self._call_delta(number, call["name"], "")
        if row.get("status") == "done" and self.message_at is None and not self.call_at:
            yield from self._end_reasoning(row)
            self.message_at = len(self.items)  # an empty answer still has its (empty) message
            yield from self._add("message", _message_item(self.mid, "", done=False), _text_part(""))
        yield from self._end_reasoning(row)
        if self.message_at is not None:
            yield from self._end_message(row)
        for number in sorted(self.call_at):
            yield from self._end_call(number, row)
        kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(final["status"],
                                                                                           "response.failed")
        yield self.event(kind, response=final)
