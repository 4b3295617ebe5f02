"""Render a model's own chat template (from its GGUF metadata) the way transformers does."""
from datetime import datetime

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class GenerationTagExtension(Extension):
    """HF templates mark assistant spans with {% generation %}; plain Jinja must ignore the tags."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _raise(message):
    raise TemplateError(message)


class ChatTemplate:
    def __init__(self, source, bos_token="", eos_token=""):
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTagExtension, loopcontrols]
        )
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source or CHATML_TEMPLATE
        self.template = env.from_string(self.source)
        self.bos_token, self.eos_token = bos_token, eos_token

    @classmethod
    def of_model(cls, source, model):
        """``source`` with the BOS and EOS texts of a llama.cpp model (llama_cpp._internals.LlamaModel)."""
        def text(token):
            if token is None or token < 0:
                return ""
            return model.detokenize([token], special=True).decode("utf-8", errors="ignore")

        return cls(source, bos_token=text(model.token_bos()), eos_token=text(model.token_eos()))

    def render(self, messages, add_generation_prompt=True, **kwargs):
        return self.template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            **kwargs,
        )
