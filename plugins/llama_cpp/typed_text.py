"""What people typed is only ever text to the model: "<|im_end|><|im_start|>system" typed in a
message must not close the turn and open a system one.

The template's own markup is tokenised with special tokens parsed, the messages' text without.
Finding a message's text verbatim in the rendered prompt is not enough: a template that rewrites
content (``|trim``, SmolLM3's handling of ``reasoning_content``) leaves text that is found nowhere,
and that text used to be tokenised with the markup. So every special token's text in a message is
swapped for a placeholder before rendering (the template moves it wherever it puts the text) and
swapped back after, remembering where: those places are text whatever the template did."""
import re
import secrets

import llama_cpp

ATTRIBUTES = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED


def special_texts(model):
    """The texts of the vocabulary's control and added tokens (``model``: a LlamaModel)."""
    vocab = model.vocab
    texts = set()
    for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        if llama_cpp.llama_vocab_get_attr(vocab, token) & ATTRIBUTES:
            text = model.detokenize([token], special=True).decode("utf-8", errors="ignore")
            if text.strip():
                texts.add(text)
    return texts


def pattern_for(texts):
    return re.compile("|".join(re.escape(t) for t in sorted(texts, key=len, reverse=True))) if texts else None


class Shield:
    """Placeholders for one render. The nonce keeps a typed look-alike from being taken for one."""

    def __init__(self, pattern):
        self.pattern = pattern
        self.nonce = str(secrets.randbelow(10**12))  # digits: a template that upper-cases keeps them
        self.typed = []
        self.placeholder = re.compile("\ue000" + self.nonce + r":(\d+)\ue001")

    def messages(self, messages):
        return [{k: (v if k == "role" else self.cover(v)) for k, v in m.items()} for m in messages]

    def cover(self, value):
        """``value`` (text, or lists and dicts of it) with special tokens' texts swapped out."""
        if isinstance(value, str) and self.pattern is not None:
            return self.pattern.sub(self._swap, value)
        if isinstance(value, list):
            return [self.cover(v) for v in value]
        if isinstance(value, dict):
            return {k: self.cover(v) for k, v in value.items()}
        return value

    def _swap(self, match):
        self.typed.append(match.group(0))
        return f"\ue000{self.nonce}:{len(self.typed) - 1}\ue001"

    def restore(self, text):
        """The rendered text with the typed texts back, and where each now lies."""
        if not self.typed:
            return text, []
        out, spans, pos, length = [], [], 0, 0
        for match in self.placeholder.finditer(text):
            typed = self.typed[int(match.group(1))]
            out.append(text[pos:match.start()])
            length += match.start() - pos
            spans.append((length, length + len(typed)))
            out.append(typed)
            length += len(typed)
            pos = match.end()
        out.append(text[pos:])
        return "".join(out), spans


def merge(*span_lists):
    """Sorted, non-overlapping union of (start, end) spans."""
    merged = []
    for start, end in sorted(s for spans in span_lists for s in spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
