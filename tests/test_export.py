"""chat.export (JSON, Markdown, zip) and the account page's export and account deletion."""
import io
import json
import zipfile

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from chat import export
from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db

PASSWORD = "pw-for-export-1"


def make_user(name):
    return get_user_model().objects.create_user(name, password=PASSWORD)


def make_branched(owner, title="Weather / today: ünïcode?"):
    """user -> assistant (two versions: the first regenerated), then a follow-up on the second."""
    conv = Conversation.objects.create(owner=owner, title=title, model="smollm2-135m",
                                       system_prompt="Be brief.")
    u1 = Message.objects.create(conversation=conv, role="user", content="What is the weather?")
    a1 = Message.objects.create(conversation=conv, parent=u1, role="assistant", content="Old answer",
                                status="stopped", model_name="smollm2-135m")
    a2 = Message.objects.create(conversation=conv, parent=u1, role="assistant", content="Sunny.",
                                reasoning="Looked outside.", status="done", model_name="smollm2-135m",
                                prompt_tokens=12, completion_tokens=3, cached_tokens=0, ttft=0.25,
                                tokens_per_second=40.0, finish_reason="stop")
    u2 = Message.objects.create(conversation=conv, parent=a2, role="user", content="Thanks!")
    a3 = Message.objects.create(conversation=conv, parent=u2, role="assistant", content="", status="error",
                                error="worker failed", model_name="smollm2-135m")
    conv.current_leaf = a3
    conv.save()
    return conv, [u1, a1, a2, u2, a3]


def test_conversation_json_has_every_message_and_the_tree():
    owner = make_user("alice")
    conv, (u1, a1, a2, u2, a3) = make_branched(owner)
    data = export.conversation_json(conv)
    json.dumps(data)  # serialisable as is
    assert data["id"] == conv.pk and data["title"] == conv.title and data["owner"] == "alice"
    assert data["settings"]["system_prompt"] == "Be brief." and data["settings"]["model"] == "smollm2-135m"
    assert data["current_leaf_id"] == a3.pk
    assert data["current_branch"] == [u1.pk, a2.pk, u2.pk, a3.pk]
    assert data["roots"] == [u1.pk]
    by_id = {m["id"]: m for m in data["messages"]}
    assert set(by_id) == {u1.pk, a1.pk, a2.pk, u2.pk, a3.pk}
    assert by_id[u1.pk]["children"] == [a1.pk, a2.pk]
    assert by_id[a1.pk]["parent_id"] == u1.pk and by_id[a1.pk]["on_current_branch"] is False
    assert by_id[a1.pk]["status"] == "stopped" and by_id[a1.pk]["content"] == "Old answer"
    assert by_id[a2.pk]["reasoning"] == "Looked outside."
    assert by_id[a2.pk]["metrics"]["completion_tokens"] == 3 and by_id[a2.pk]["metrics"]["ttft"] == 0.25
    assert by_id[a3.pk]["error"] == "worker failed"
    assert by_id[a3.pk]["created_at"] and data["created_at"]


def test_markdown_shows_the_current_branch_and_notes_others():
    conv, _ = make_branched(make_user("alice"))
    text = export.conversation_markdown(conv)
    assert text.startswith(f"# {conv.title}\n")
    assert "Sunny." in text and "Thanks!" in text and "Looked outside." in text
    assert "Old answer" not in text  # another branch: noted, not shown
    assert "Version 2 of 2" in text and "1 other version(s)" in text
    assert "Error: worker failed" in text
    assert text.index("What is the weather?") < text.index("Sunny.") < text.index("Thanks!")


def test_without_text_nothing_written_by_people_or_models_is_exported():
    conv, _ = make_branched(make_user("alice"))
    secret_bits = ["What is the weather?", "Old answer", "Sunny.", "Looked outside.", "Thanks!",
                   "Be brief.", "worker failed", conv.title]
    data = export.conversation_json(conv, include_text=False)
    text = export.conversation_markdown(conv, include_text=False)
    archive = export.export_zip([conv], include_text=False)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        zipped = "".join(zf.read(name).decode() for name in zf.namelist())
    for blob in (json.dumps(data, ensure_ascii=False), text, zipped):
        for bit in secret_bits:
            assert bit not in blob
    # The structure and metrics are still there.
    assert len(data["messages"]) == 5 and data["text_included"] is False
    assert all(m["content"] is None for m in data["messages"])
    assert any(m["metrics"]["completion_tokens"] == 3 for m in data["messages"])


def test_zip_has_one_json_and_one_markdown_per_conversation_with_unique_safe_names():
    owner = make_user("alice")
    convs = [make_branched(owner, title="Same title")[0], make_branched(owner, title="Same title")[0],
             make_branched(owner, title="../../etc/passwd")[0], make_branched(owner, title="日本語")[0]]
    with zipfile.ZipFile(io.BytesIO(export.export_zip(convs))) as zf:
        names = zf.namelist()
        index = json.loads(zf.read("index.json"))
        assert len(names) == len(set(names))
        assert "README.md" in names
        for name in names:
            assert ".." not in name and not name.startswith("/") and name.isascii()
        assert index["count"] == 4 and [row["id"] for row in index["conversations"]] == [c.pk for c in convs]
        for conv, row in zip(convs, index["conversations"]):
            assert json.loads(zf.read(row["json"]))["id"] == conv.pk
            assert zf.read(row["markdown"]).decode().startswith(f"# {conv.title}")
        assert sum(n.endswith(".json") for n in names) == 5 and sum(n.endswith(".md") for n in names) == 5


def test_zip_size_cap_leaves_conversations_out_and_says_so():
    owner = make_user("alice")
    convs = [make_branched(owner)[0] for _ in range(3)]
    with zipfile.ZipFile(io.BytesIO(export.export_zip(convs, max_bytes=60))) as zf:
        index = json.loads(zf.read("index.json"))
    assert index["count"] == 1 and index["left_out_for_size"] == [convs[1].pk, convs[2].pk]


def test_an_empty_conversation_exports():
    conv = Conversation.objects.create(owner=make_user("alice"), model="smollm2-135m")
    assert export.conversation_json(conv)["messages"] == []
    assert "_No messages._" in export.conversation_markdown(conv)


# ---- the account page: export and delete -------------------------------------------------------

def zip_from(response):
    """The streamed zip's bytes (the view streams an async iterator, as the ASGI server reads it)."""
    from asgiref.sync import async_to_sync

    async def collect():
        return b"".join([chunk async for chunk in response.streaming_content])

    assert response.streaming and response["Content-Type"] == "application/zip"
    return zipfile.ZipFile(io.BytesIO(async_to_sync(collect)()))


def test_the_account_export_holds_exactly_the_users_conversations(client):
    alice, bob = make_user("alice"), make_user("bob")
    mine = [make_branched(alice, title="Alice chat")[0], make_branched(alice, title="Alice chat")[0]]
    api_conv = Conversation.objects.create(owner=alice, title="From the API", model="smollm2-135m", source="api")
    Message.objects.create(conversation=api_conv, role="user", content="api question")
    mine.append(api_conv)
    theirs = Conversation.objects.create(owner=bob, title="Bob's secret plans", model="smollm2-135m")
    Message.objects.create(conversation=theirs, role="user", content="bob-only-text")
    client.force_login(alice)
    response = client.get(reverse("account-export"))
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith('attachment; filename="smolsite-alice-')
    with zip_from(response) as zf:
        index = json.loads(zf.read("index.json"))
        everything = b"".join(zf.read(name) for name in zf.namelist())
        exported = {json.loads(zf.read(row["json"]))["id"] for row in index["conversations"]}
    assert exported == {c.pk for c in mine} and index["count"] == 3 and index["text_included"] is True
    assert b"bob-only-text" not in everything and b"Bob's secret" not in everything
    assert b"api question" in everything and b"Sunny." in everything


def test_an_export_with_no_conversations_is_a_valid_zip(client):
    client.force_login(make_user("alice"))
    with zip_from(client.get(reverse("account-export"))) as zf:
        assert json.loads(zf.read("index.json"))["count"] == 0


def test_export_and_delete_need_a_signed_in_user(client):
    for name in ("account-export", "account-delete"):
        response = client.get(reverse(name))
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def make_everything(user):
    """A chat with an answer streaming, an API key, a batch with its file, a usage record and a quota."""
    from api.models import ApiKey
    from batches.models import Batch, BatchFile, BatchLine
    from usage.models import UsageRecord, UserQuota

    conv, messages = make_branched(user)
    streaming = Message.objects.create(conversation=conv, parent=messages[-2], role="assistant", status="streaming",
                                       model_name="smollm2-135m")
    key, _ = ApiKey.create_for(user, "laptop")
    data = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
    bfile = BatchFile.objects.create(owner=user, filename="in.jsonl", data=data, bytes=len(data))
    batch = Batch.objects.create(owner=user, input_file=bfile, status="in_progress", total=1)
    BatchLine.objects.create(batch=batch, index=0, custom_id="a", body={}, status="queued")
    UsageRecord.objects.create(user=user, model="smollm2-135m", message=messages[2], prompt_tokens=3, total_tokens=6)
    UserQuota.objects.create(user=user)
    return conv, streaming, key


def counts_for(user_id):
    from api.models import ApiKey
    from batches.models import Batch, BatchFile, BatchLine
    from usage.models import UsageRecord, UserQuota

    return {
        "user": get_user_model().objects.filter(pk=user_id).count(),
        "conversations": Conversation.objects.filter(owner_id=user_id).count(),
        "messages": Message.objects.filter(conversation__owner_id=user_id).count(),
        "keys": ApiKey.objects.filter(user_id=user_id).count(),
        "batches": Batch.objects.filter(owner_id=user_id).count(),
        "lines": BatchLine.objects.filter(batch__owner_id=user_id).count(),
        "files": BatchFile.objects.filter(owner_id=user_id).count(),
        "usage": UsageRecord.objects.filter(user_id=user_id).count(),
        "quota": UserQuota.objects.filter(user_id=user_id).count(),
    }


def test_deleting_the_account_needs_the_password_and_the_confirmation(client):
    alice = make_user("alice")
    make_everything(alice)
    before = counts_for(alice.pk)
    client.force_login(alice)
    assert client.get(reverse("account-delete")).status_code == 200
    wrong = client.post(reverse("account-delete"), {"password": "not-it", "confirm": "on"})
    assert wrong.status_code == 400 and "not your password" in wrong.content.decode()
    unticked = client.post(reverse("account-delete"), {"password": PASSWORD})
    assert unticked.status_code == 400 and "Tick this to confirm" in unticked.content.decode()
    assert counts_for(alice.pk) == before and all(before.values())
    assert client.get(reverse("account")).status_code == 200  # still signed in


def test_deleting_the_account_removes_everything_of_theirs_and_nothing_else(client):
    from inference.stop import is_stop_requested

    alice, bob = make_user("alice"), make_user("bob")
    _, streaming, key = make_everything(alice)
    make_everything(bob)
    bob_before = counts_for(bob.pk)
    client.force_login(alice)
    response = client.post(reverse("account-delete"), {"password": PASSWORD, "confirm": "on"})
    assert response.status_code == 200 and "were deleted" in response.content.decode()
    assert set(counts_for(alice.pk).values()) == {0}
    assert counts_for(bob.pk) == bob_before
    assert is_stop_requested(str(streaming.pk))  # the worker stops generating for the deleted account
    # Signed out: the account page sends to the login page, and the key no longer opens the API.
    assert client.get(reverse("account")).status_code == 302
    from api.models import ApiKey

    assert not ApiKey.objects.filter(pk=key.pk).exists()


def test_deleting_the_account_leaves_no_session_or_cache_entry_behind(client):
    """Issue 16: the account's other sessions (another browser) and its entries in the shared cache
    (the open-socket register, which names its socket channels) go with it; bob's stay."""
    from django.contrib.sessions.models import Session
    from django.core.cache import cache
    from django.test import Client

    from chat import limits

    alice, bob = make_user("alice"), make_user("bob")
    make_everything(alice)
    laptop, bobs = Client(), Client()
    laptop.force_login(alice)
    bobs.force_login(bob)
    limits.open_socket(alice.pk, "specific.alice-tab")
    limits.open_socket(bob.pk, "specific.bob-tab")

    def sessions_of(user):
        return [s for s in Session.objects.all() if s.get_decoded().get("_auth_user_id") == str(user.pk)]

    assert sessions_of(alice)
    client.force_login(alice)
    assert client.post(reverse("account-delete"), {"password": PASSWORD, "confirm": "on"}).status_code == 200
    assert sessions_of(alice) == [] and len(sessions_of(bob)) == 1
    assert all(cache.get(key) is None for key in limits.socket_cache_keys(alice.pk))
    assert cache.get(limits.socket_cache_keys(bob.pk)[0])
    assert laptop.get(reverse("account")).status_code == 302
    assert set(counts_for(alice.pk).values()) == {0}
    # The device workers are told to drop alice's cached conversation state (tests/test_engine_erasure.py)
    from inference import erasure
    noted = {key for key, _ in cache.get(erasure.KEY)}
    assert set(erasure.user_keys(alice.pk)) <= noted and not set(erasure.user_keys(bob.pk)) & noted


def test_the_only_administrator_cannot_delete_their_account(client):
    admin = get_user_model().objects.create_superuser("root", password=PASSWORD)
    client.force_login(admin)
    response = client.post(reverse("account-delete"), {"password": PASSWORD, "confirm": "on"})
    assert response.status_code == 400 and "only administrator" in response.content.decode()
    assert get_user_model().objects.filter(pk=admin.pk).exists()
    get_user_model().objects.create_superuser("root2", password=PASSWORD)
    assert client.post(reverse("account-delete"), {"password": PASSWORD, "confirm": "on"}).status_code == 200
    assert not get_user_model().objects.filter(pk=admin.pk).exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_deleting_the_account_closes_its_open_chat_sockets_at_once(settings):
    """With the idle re-check far away, the socket closes because the deletion told it to."""
    import asyncio

    from channels.db import database_sync_to_async
    from channels.testing import WebsocketCommunicator
    from django.test import Client

    from accounts.deletion import delete_user_data
    from smolsite.asgi import application

    settings.SMOLSITE_WS_AUTH_SECONDS = 3600

    @database_sync_to_async
    def setup():
        user = make_user("alice")
        conv = Conversation.objects.create(owner=user, model="smollm2-135m")
        browser = Client()
        browser.force_login(user)
        return user, conv, browser.cookies["sessionid"].value

    user, conv, session_key = await setup()
    comm = WebsocketCommunicator(application, f"/ws/chat/{conv.pk}/",
                                 headers=[(b"origin", b"http://127.0.0.1"), (b"cookie", f"sessionid={session_key}".encode())])
    connected, _ = await comm.connect()
    assert connected
    await database_sync_to_async(delete_user_data)(user)
    frames = []
    async with asyncio.timeout(30):
        while True:
            output = await comm.receive_output(30)
            if output["type"] == "websocket.close":
                break
            frames.append(json.loads(output["text"]))
    assert output["code"] == 4401
    assert frames and frames[-1]["type"] == "error" and "signed out" in frames[-1]["error"]
