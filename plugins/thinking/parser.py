"""Splits a streamed completion into reasoning (inside ``<think>…</think>``) and answer text.

Rules (``tests/test_thinking_parser.py`` checks them for arbitrary text and chunking):

* An opening ``<think>`` counts only at the very start of the completion, after optional
  whitespace; anywhere else it is ordinary answer text. (With thinking off, SmolLM3's prompt
  already ends with an empty think block, so the model starts with the answer; a stray
  ``<think>`` at the start is still treated as reasoning.)
* After an opening tag, everything up to the first ``</think>`` is reasoning; without one (the
  generation stopped or hit max_tokens) everything is reasoning, flushed by ``finish()``.
* The tags themselves are removed. Nothing else is: whitespace before the opening tag and the
  whitespace run right after ``</think>`` (typically "\\n\\n") are reported as reasoning, so
  the answer starts with its first visible character.
* The two tags are recognised however the text is cut into chunks; at most
  ``len("</think>") - 1`` characters are held back while a tag may be starting.
"""
from inference.plugin_api import partial_tag

OPEN = "<think>"
CLOSE = "</think>"

_START, _REASONING, _AFTER_CLOSE, _ANSWER = range(4)


class ThinkParser:
    def __init__(self):
        self._state = _START
        self._held = ""

    def feed(self, text):
        if self._state == _ANSWER:  # the common case once the answer has begun
            return [("text", text)] if text else []
        out = []
        buf, self._held = self._held + text, ""
        while buf:
            if self._state == _START:
                body = buf.lstrip()
                if body.startswith(OPEN):
                    _emit(out, "reasoning", buf[:len(buf) - len(body)])
                    buf, self._state = body[len(OPEN):], _REASONING
                elif OPEN.startswith(body):  # only whitespace, or a tag still arriving
                    self._held, buf = buf, ""
                else:
                    self._state = _ANSWER
            elif self._state == _REASONING:
                end = buf.find(CLOSE)
                if end >= 0:
                    _emit(out, "reasoning", buf[:end])
                    buf, self._state = buf[end + len(CLOSE):], _AFTER_CLOSE
                else:
                    keep = partial_tag(buf, CLOSE)
                    _emit(out, "reasoning", buf[:len(buf) - keep])
                    self._held, buf = buf[len(buf) - keep:], ""
            elif self._state == _AFTER_CLOSE:
                body = buf.lstrip()
                _emit(out, "reasoning", buf[:len(buf) - len(body)])
                buf = body
                if body:
                    self._state = _ANSWER
            else:
                _emit(out, "text", buf)
                buf = ""
        return out

    def finish(self):
        """Whatever is held back: a partial tag is plain text (or reasoning, inside a block)."""
        held, self._held = self._held, ""
        if not held:
            return []
        return [("reasoning" if self._state == _REASONING else "text", held)]


def _emit(out, kind, text):
    if not text:
        return
    if out and out[-1][0] == kind:
        out[-1] = (kind, out[-1][1] + text)
    else:
        out.append((kind, text))
