"""What a backend is: the interface the generation service talks to, and the request types.

A backend instance lives in one worker process and is asked to serve several requests at once
(from several threads), so the contract is "submit a request, iterate its chunks"; the llama.cpp
backend batches them, a backend without batching serialises them behind its own lock.
"""
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Union

from . import toolcalls


@dataclass
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 1024
    seed: Optional[int] = None
    # Stop strings (OpenAI's "stop"): the answer ends before the first of them. A person stopping
    # a generation is inference.stop's flag, not this.
    stop: list = field(default_factory=list)


@dataclass
class GenerationRequest:
    id: str
    model: str
    messages: list  # [{"role": ..., "content": ..., "reasoning": ...}], oldest first
    system_prompt: str = ""
    params: SamplingParams = field(default_factory=SamplingParams)
    thinking: bool = False  # the user's toggle; plugins turn it into template flags
    template_kwargs: dict = field(default_factory=dict)
    features: list = field(default_factory=list)
    group: str = ""  # channel-layer group that receives the events
    # Requests with the same key continue one conversation: backends may keep its state warm.
    session_key: str = ""
    # Set by the service: how many of the oldest turns were left out to fit the context.
    dropped_turns: int = 0
    # Whose request this is: backends reuse cached tokens only within one user, and share the
    # device fairly between users.
    user_key: str = ""
    priority: str = "interactive"  # or "background" (batch lines, background responses): served when people are not
    # A GBNF grammar the answer must follow (structured output); "" for free text. A backend that
    # cannot enforce it must fail the request, never answer unconstrained.
    grammar: str = ""
    # A prompt used exactly as given, without the chat template (the API's /v1/completions).
    raw_prompt: Optional[str] = None
    # False: a history longer than the context is an error (PromptTooLong) instead of losing its
    # oldest turns (API clients send the whole history and expect it all to be read).
    truncate_history: bool = True
    # Tools the model may call: [{"name", "description", "parameters"}] (inference.toolcalls).
    # Messages may then hold assistant turns with "tool_calls" and "tool" turns with results.
    tools: list = field(default_factory=list)
    # The grammar (a call's) applies from the model's first "<tool_call>" on, not from its first
    # token: tool_choice "auto". A backend that cannot wait so must enforce it from the start.
    grammar_waits_for_call: bool = False

    def chat_messages(self, native_tools=False):
        """Messages in the shape chat templates expect, system prompt first. Without
        ``native_tools`` (a template with no place for tools) the tools are described in the
        system turn and tool results become user turns (inference.toolcalls)."""
        system = self.system_prompt
        if self.tools and not native_tools:
            system = f"{system}\n\n{toolcalls.tool_block(self.tools)}" if system else toolcalls.tool_block(self.tools)
        out = [{"role": "system", "content": system}] if system else []
        for m in toolcalls.template_messages(self.messages, native_tools):
            item = {"role": m["role"], "content": m["content"]}
            if m.get("reasoning"):
                item["reasoning_content"] = m["reasoning"]
            out.append(item)
        return out


@dataclass
class Delta:
    text: str


@dataclass
class Queued:
    """The request waits for the device behind ``ahead`` others (0: it is next)."""
    ahead: int


@dataclass
class Finish:
    # "stop" (end of turn or stop string), "length" (max_tokens), "stopped" (user), "error", or
    # "interrupted" (the engine went away mid-answer, e.g. a remote server died: the text so far stays)
    reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from kept state, not prefilled
    error: str = ""  # with reason "error" or "interrupted": what went wrong, in words for the user
    backend: str = ""  # who answered, when the backend hands requests on (e.g. "openai_upstream:gpu-1")


Chunk = Union[Delta, Queued, Finish]


class PromptTooLong(ValueError):
    def __init__(self, tokens, limit):
        super().__init__(f"the prompt is {tokens} tokens but the model's context holds {limit}")
        self.tokens, self.limit = tokens, limit


class BackendError(RuntimeError):
    """A failure worth showing to the user as the message's error text."""


class Backend(ABC):
    """One model, loaded once per worker process."""

    name = "backend"

    def __init__(self, model):
        self.model = model

    @abstractmethod
    def load(self) -> None:
        """Validate and load the model; raise with a clear message when that is impossible."""

    @abstractmethod
    def render_prompt(self, request: GenerationRequest) -> str:
        """The exact prompt text for ``request`` (chat template applied)."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        ...

    @property
    @abstractmethod
    def context_size(self) -> int:
        ...

    @abstractmethod
    def submit(self, request: GenerationRequest, prompt: str,
               should_stop: Callable[[], bool]) -> Iterator[Chunk]:
        """Generate for ``prompt``: yield Delta chunks (and Queued while waiting for the device)
        and exactly one Finish, last.

        ``should_stop`` is checked before the first token and at every step. A backend may be
        asked for several requests at once, from several threads.
        """

    def forget_users(self, user_keys) -> None:
        """Drop whatever this backend keeps for these users between requests (their cached
        conversation state): their account is deleted. Running requests end on their own."""

    def close(self) -> None:
        pass
