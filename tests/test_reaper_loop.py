"""The reaper's periodic loop, as a served process starts it (smolsite.startup): it ends, on its
own, a generation whose worker died and tells the open tab."""
import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from chat.models import Conversation, Message
from chat.reaper import start_reaper
from smolsite.asgi import application


@database_sync_to_async
def orphaned_generation():
    user = get_user_model().objects.create_user("alice", password="pw-123456789")
    conv = Conversation.objects.create(owner=user, model="smollm2-135m")
    question = Message.objects.create(conversation=conv, role="user", content="hi")
    answer = Message.objects.create(conversation=conv, parent=question, role="assistant", status="streaming",
                                    content="half an answer", worker_id="cpu@gone:1", stream_seq=3)
    return user, conv, answer


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_periodic_reaper_ends_a_dead_workers_generation_on_an_open_tab(settings):
    user, conv, answer = await orphaned_generation()
    comm = WebsocketCommunicator(application, f"/ws/chat/{conv.pk}/", headers=[(b"origin", b"http://127.0.0.1")])
    comm.scope["user"] = user
    assert (await comm.connect())[0]
    snapshot = json.loads(await comm.receive_from(timeout=10))
    assert snapshot["type"] == "snapshot" and snapshot["status"] == "streaming"
    settings.SMOLSITE_REAPER_SECONDS = 0.2
    thread = start_reaper()  # nobody calls reap() here: only the loop can end it
    try:
        async with asyncio.timeout(60):
            while True:
                frame = json.loads(await comm.receive_from(timeout=60))
                if frame["type"] == "final":
                    break
        assert "Interrupted" in frame["html"] and "half an answer" in frame["html"]
        message = await database_sync_to_async(Message.objects.get)(pk=answer.pk)
        assert message.status == "interrupted" and message.content == "half an answer"
    finally:
        thread.stop()
        await asyncio.to_thread(thread.join, 30)
    assert not thread.is_alive()
    await comm.disconnect()
