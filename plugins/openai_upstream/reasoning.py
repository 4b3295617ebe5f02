"""Reasoning from an upstream (``reasoning_content``) into the Thinking panel. The backend marks each
reasoning chunk with MARK; this stream filter (the first in the chain for upstream models: no
other built-in plugin filters them) turns marked chunks into "reasoning" and leaves the rest
"text". Upstream text never holds MARK: the backend drops NUL characters from what it receives."""
MARK = "\x00reasoning\x00"


def mark(text):
    return MARK + text


class ReasoningMarks:
    def feed(self, text):
        if text.startswith(MARK):
            return [("reasoning", text[len(MARK):])]
        return [("text", text)] if text else []

    def finish(self):
        return []
