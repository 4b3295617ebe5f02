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
