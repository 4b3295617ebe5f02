"""A backend plugin of its own entry point ("hello_backend"): a model configured with
``"backend": "hello-shout"`` answers with the last user message shouted back, word by word."""
from inference.plugin_api import Backend, Delta, Finish, hookimpl


class ShoutBackend(Backend):
    name = "hello-shout"

    def load(self):
        self.loaded = True

    @property
    def context_size(self):
        return self.model.n_ctx

    def render_prompt(self, request):
        return "\n".join(f"{m['role']}: {m['content']}" for m in request.chat_messages())

    def count_tokens(self, text):
        return len(text.split())

    def submit(self, request, prompt, should_stop):
        last_user = next((m["content"] for m in reversed(request.messages) if m["role"] == "user"), "")
        words = ["HELLO!"] + last_user.upper().split()
        produced = 0
        for i, word in enumerate(words[: request.params.max_tokens]):
            if should_stop():
                yield Finish("stopped", self.count_tokens(prompt), produced)
                return
            produced += 1
            yield Delta(word if i == 0 else " " + word)
        yield Finish("length" if len(words) > request.params.max_tokens else "stop",
                     self.count_tokens(prompt), produced)


@hookimpl
def register_backends(register):
    register("hello-shout", ShoutBackend)
