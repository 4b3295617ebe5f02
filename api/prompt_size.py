"""How long an API request's prompts are, known before any row is written, so a prompt longer than
the model's context is refused at once (400, as OpenAI does) and the quota holds back the prompt's
tokens too (the ledger charges prompt plus completion).

llama.cpp models are counted with their own tokenizer, loaded vocabulary-only in this process
(about 0.1 s once per model, a few MB; counting 600 KB of text takes 0.3 s, so this runs off the
event loop), and the turns rendered with the model's own chat template. Other backends (plugins)
are bounded from the text: no tokenizer here, but no token is shorter than one byte.
The ledger still charges what the worker counted; this only decides what is held meanwhile.

Two figures per prompt: ``least`` (the typed text alone: the prompt is surely at least this
long, so refusing on it never refuses a prompt that fits) and ``most`` (what the quota holds back
until the ledger has the real count)."""
import functools
import logging
import threading
from dataclasses import dataclass

from django.conf import settings

from inference import toolcalls
from inference.backends import GenerationRequest
from inference.gguf_info import read_gguf_info
from inference.model_configs import get_model
from inference.prompt import ChatTemplate

from .errors import ApiError

logger = logging.getLogger(__name__)

# The template's markup and default system prompt when it cannot be rendered here, and a margin
# for what a plugin adds to a rendered one (the thinking plugin's reasoning switch, say).
TEMPLATE_TOKENS = 256
TURN_TOKENS = 8
LLAMA_BACKENDS = ("", "llama_cpp")


def max_messages():
    """Messages one request may send: each becomes a row, and its copy goes into every choice's
    options, so this bounds the rows and bytes one request writes."""
    return getattr(settings, "SMOLSITE_API_MAX_MESSAGES", 256)


@dataclass
class Size:
    least: int
    most: int


class _Vocab:
    """A model's tokenizer and chat template, without its weights."""

    def __init__(self, path):
        # llama.cpp's bindings load its native library: only a process that counts a GGUF model's
        # prompts pays for that (upstream-only sites never do).
        import llama_cpp
        from llama_cpp._internals import LlamaModel

        params = llama_cpp.llama_model_default_params()
        params.vocab_only, params.n_gpu_layers = True, 0
        self.model = LlamaModel(path_model=path, params=params, verbose=False)
        self.template = ChatTemplate.of_model(read_gguf_info(path).chat_template, self.model)

    def count(self, text, special=False):
        return len(self.model.tokenize(text.encode("utf-8"), add_bos=False, special=special)) if text else 0


_lock = threading.Lock()


@functools.lru_cache(maxsize=16)
def _vocab(path):
    try:
        return _Vocab(path)
    except Exception as exc:  # not loadable here: the worker says why; bound from the text instead
        logger.warning("cannot read the tokenizer of %s (%s): prompt sizes are bounded from the text", path, exc)
        return None


def vocab_for(model_name):
    model = get_model(model_name)
    if model.backend not in LLAMA_BACKENDS:
        return None
    with _lock:  # one load per model even when requests arrive together
        return _vocab(model.path)


def measure(vocab, messages, raw=False, template_kwargs=None):
    """The Size of one prompt: ``messages`` in chat-template shape, or one raw prompt (``raw``)."""
    if vocab is None:
        # No tokenizer: at most one token per byte of the turns and their roles, plus a few for
        # each turn's markup (a plugin's own template preamble is its ledger's to count).
        return Size(0, sum(len(m["content"].encode()) + len(m["role"]) + TURN_TOKENS for m in messages))
    contents = sum(vocab.count(m["content"]) for m in messages)
    # Pieces tokenized apart may merge by a token at each seam when joined.
    least = max(0, contents - len(messages))
    if raw:
        return Size(least, contents + 1)  # plus a BOS
    try:
        rendered = vocab.count(vocab.template.render(messages, add_generation_prompt=True, **(template_kwargs or {})),
                               special=True)
        most = max(rendered, contents) + TURN_TOKENS * 2
    except Exception:  # a template that refuses these turns here; the worker will say so
        most = contents + TURN_TOKENS * len(messages) + TEMPLATE_TOKENS
    return Size(least, most + 1)


def check(plan):
    """Refuse a request whose messages are too many or whose prompt cannot fit the model's
    context beside its answer (the worker's own rule: at least min(max_tokens, n_ctx / 4)
    tokens for the answer); returns the tokens to hold back for the prompts of all its choices."""
    limit = max_messages()
    turns = len(plan.turns) if plan.kind == "chat" else len(plan.prompts)
    if limit and turns > limit:
        what = "'messages' has" if plan.kind == "chat" else "'prompt' has"
        raise ApiError(400, f"{what} {turns:,} entries; at most {limit:,} are accepted on this server.",
                       param="messages" if plan.kind == "chat" else "prompt", code="too_many_messages")
    vocab = vocab_for(plan.model)
    n_ctx = get_model(plan.model).n_ctx
    answer = max(1, min(plan.max_tokens, n_ctx // 4))
    if plan.kind == "chat":
        # The turns as the worker renders them (inference.backends.GenerationRequest.chat_messages).
        native = vocab is not None and toolcalls.template_knows_tools(vocab.template.source)
        request = GenerationRequest(id="", model=plan.model, messages=plan.turns, system_prompt=plan.system_prompt,
                                    tools=plan.tools)
        messages = request.chat_messages(native_tools=native)
        kwargs = {"xml_tools": [toolcalls.tool_json(t) for t in plan.tools]} if native and plan.tools else None
        if kwargs:  # the tools are text the model reads, surely: count them in the least too
            messages = messages + [{"role": "system", "content": "\n".join(kwargs["xml_tools"])}]
        sizes = [measure(vocab, messages, template_kwargs=kwargs)]
        param = "messages"
    else:
        sizes = [measure(vocab, [{"role": "user", "content": p}], raw=True) for p in plan.prompts]
        param = "prompt"
    for size in sizes:
        if size.least + answer > n_ctx:
            raise ApiError(400, f"This model's maximum context length is {n_ctx:,} tokens. Your {param} are at "
                                f"least {size.least:,} tokens, and {answer:,} are kept for the answer. Shorten the "
                                f"{param} or lower max_tokens.", param=param, code="context_length_exceeded")
    return [s.most for s in sizes]
