"""The echo backend: repeats the last user message word by word. For tests and demos that
must run without a model file; it is never chosen unless a model asks for backend "echo"."""
import time

from inference.plugin_api import Backend, Delta, Finish, hookimpl


class EchoBackend(Backend):
    name = "echo"

    def load(self):
        self.delay = float(self.model.options.get("delay", 0.0))

    @property
    def context_size(self):
        return self.model.n_ctx

    def render_prompt(self, request):
        return "\n".join(f"{m['role']}: {m['content']}" for m in request.chat_messages())

    def count_tokens(self, text):
        return len(text.split())

    def submit(self, request, prompt, should_stop):
        if request.grammar:
            yield Finish("error", self.count_tokens(prompt), 0,
                         error="the echo backend cannot follow a grammar (structured output)")
            return
        last_user = next((m["content"] for m in reversed(request.messages) if m["role"] == "user"), "")
        words = last_user.split()
        produced = 0
        for i, word in enumerate(words[: request.params.max_tokens]):
            if should_stop():
                yield Finish("stopped", self.count_tokens(prompt), produced)
                return
            if self.delay:
                time.sleep(self.delay)
            produced += 1
            yield Delta(word if i == 0 else " " + word)
        reason = "length" if len(words) > request.params.max_tokens else "stop"
        if should_stop():
            reason = "stopped"
        yield Finish(reason, self.count_tokens(prompt), produced)


@hookimpl
def register_backends(register):
    register("echo", EchoBackend)
