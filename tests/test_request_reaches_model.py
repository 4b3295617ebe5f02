"""What a chat sets reaches the model: its system prompt is in the prompt the backend renders,
its top_p reaches llama.cpp's sampler chain and changes what is sampled, and the longest message
the site accepts (SMOLSITE_MAX_MESSAGE_CHARS) is reached below the websocket frame limit."""
import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model

from chat.models import Conversation, Message
from inference.testing import make_request, run_request
from plugins.llama_cpp import sampling
from smolsite.asgi import application

MODEL = "smollm2-135m"
QUESTION = "Write one sentence about the sea."


def sample(registry, request_id, **params):
    # From a cold cache: a prefix computed in another batch rounds differently (tests/test_generation.py).
    assert registry.backend(MODEL).engine.forget_cached()
    return run_request(registry, make_request(MODEL, QUESTION, request_id=request_id, max_tokens=24, **params))[0].text


def test_top_p_changes_what_is_sampled(loaded_registry):
    """At a high temperature, a tiny top_p leaves only the most likely token each step: whatever
    the seed, the answer is the greedy one. With top_p 1 the same seeds wander off. A backend that
    ignored top_p would sample freely in both cases."""
    greedy = sample(loaded_registry, "greedy", temperature=0.0)
    narrow = {sample(loaded_registry, f"narrow-{seed}", temperature=1.5, top_p=1e-4, seed=seed)
              for seed in (1, 2, 3, 4)}
    assert narrow == {greedy}
    wide = [sample(loaded_registry, f"wide-{seed}", temperature=1.5, top_p=1.0, seed=seed) for seed in (1, 2, 3, 4)]
    assert any(text != greedy for text in wide)


@database_sync_to_async
def make_conversation(**kwargs):
    user = get_user_model().objects.create_user("alice", password="pw-123456789")
    return user, Conversation.objects.create(owner=user, model=MODEL, **kwargs)


async def open_socket(user, conv):
    comm = WebsocketCommunicator(application, f"/ws/chat/{conv.pk}/", headers=[(b"origin", b"http://127.0.0.1")])
    comm.scope["user"] = user
    assert (await comm.connect())[0]
    return comm


async def frames_until(comm, predicate, timeout=120):
    frames = []
    async with asyncio.timeout(timeout):
        while True:
            frames.append(json.loads(await comm.receive_from(timeout=timeout)))
            if predicate(frames[-1]):
                return frames


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_chats_system_prompt_and_top_p_reach_the_model(loaded_registry, monkeypatch):
    backend = loaded_registry.backend(MODEL)
    prompts, top_ps = [], []
    real_render, real_top_p = backend.render_prompt, sampling.llama_cpp.llama_sampler_init_top_p

    def render_prompt(request):
        prompt = real_render(request)
        prompts.append((request, str(prompt)))
        return prompt

    def init_top_p(p, min_keep):
        top_ps.append(p)
        return real_top_p(p, min_keep)

    monkeypatch.setattr(backend, "render_prompt", render_prompt)
    monkeypatch.setattr(sampling.llama_cpp, "llama_sampler_init_top_p", init_top_p)
    system = "You are Captain Smol, a pirate who answers in one line."
    user, conv = await make_conversation(system_prompt=system, temperature=0.8, top_p=0.42, max_tokens=8)
    comm = await open_socket(user, conv)
    await comm.send_json_to({"action": "send", "content": "Where is the treasure?"})
    await frames_until(comm, lambda f: f["type"] == "final")
    mine = [(r, text) for r, text in prompts if "Where is the treasure?" in text]
    assert len(mine) == 1
    request, text = mine[0]
    # SmolLM2's own chat template, with the chat's system prompt as the system turn.
    assert f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nWhere is the treasure?<|im_end|>" in text
    assert (request.params.top_p, request.params.temperature) == (0.42, 0.8)
    assert top_ps == [pytest.approx(0.42)]
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_message_length_limit_is_reached_below_the_frame_limit(loaded_registry):
    limit = settings.SMOLSITE_MAX_MESSAGE_CHARS
    user, conv = await make_conversation(temperature=0.0, max_tokens=4)
    comm = await open_socket(user, conv)
    frame = json.dumps({"action": "send", "content": "x" * (limit + 1)})
    assert len(frame.encode()) < settings.SMOLSITE_MAX_FRAME_BYTES  # the frame limit does not trip first
    await comm.send_to(text_data=frame)
    refused = json.loads(await comm.receive_from(timeout=30))
    assert refused["type"] == "error" and f"{limit + 1:,} characters; the limit is {limit:,}" in refused["error"]
    assert await database_sync_to_async(Message.objects.filter(conversation=conv).count)() == 0
    # One character less is accepted (then stopped: its prefill would be long).
    await comm.send_json_to({"action": "send", "content": "x " * (limit // 2)})
    reply = (await frames_until(comm, lambda f: f["type"] == "thread"))[-1]["active"]
    await comm.send_json_to({"action": "stop"})
    await frames_until(comm, lambda f: f["type"] == "final" and f["message"] == reply)
    question = await database_sync_to_async(Message.objects.get)(conversation=conv, role="user")
    assert len(question.content) == limit - 1  # "x " * n, stripped
    await comm.disconnect()
