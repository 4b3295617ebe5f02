"""The privacy switch (SMOLSITE_ADMIN_READ_MESSAGES) on the admin paths added since the last review
(issue 16 §4, §5): batches, batch lines, batch files, API keys, usage, quotas, users, the audit
log. Every text a user or a model wrote carries "ZEBRA", so a page that leaks it is caught."""
from django.contrib.admin import site as admin_site
from django.contrib.admin.utils import quote
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse
import pytest

from batches.models import Batch, BatchFile, BatchLine
from chat.models import Conversation, Message, ToolCall
from review.access import TEXT_FIELDS
from review.models import AuditRecord
from usage.models import UsageRecord

pytestmark = pytest.mark.django_db
PASSWORD = "pw-123456789"
MARK = "zebra"


@pytest.fixture
def world():
    User = get_user_model()
    dora = User.objects.create_user("dora", password=PASSWORD)
    conv = Conversation.objects.create(owner=dora, title="ZEBRA-TITLE", model="smollm2-135m", source="batch")
    answer = Message.objects.create(conversation=conv, role="assistant", content="ZEBRA-ANSWER", status="error",
                                    error="ZEBRA-MESSAGE-ERROR")
    UsageRecord.objects.create(user=dora, model="smollm2-135m", message=answer, total_tokens=3)
    upload = BatchFile.objects.create(owner=dora, filename="in.jsonl", data=b'{"ZEBRA-FILE": 1}', bytes=17)
    # A batch that failed validation (its errors quote the request) and one that ran, with a line
    # whose error quotes model output: the cases the old test, with a clean batch, could not catch.
    failed = Batch.objects.create(owner=dora, status="failed", input_file=upload, metadata={"note": "ZEBRA-META"},
                                  errors=[{"code": "invalid_value", "line": 1, "param": "body.model",
                                           "message": "'ZEBRA-MODEL' is not a model on this server."}])
    ran = Batch.objects.create(owner=dora, status="completed", total=1, failed=1, input_file=upload)
    line = BatchLine.objects.create(
        batch=ran, index=0, custom_id="line-1", status="failed", conversation_id=conv.pk,
        body={"model": "smollm2-135m", "messages": [{"role": "user", "content": "ZEBRA-BODY"}]},
        response={"status_code": 200, "body": {"choices": [{"message": {"content": "ZEBRA-RESPONSE"}}]}},
        error={"code": "invalid_json", "message": "The model wrote ZEBRA-OUTPUT, not JSON."})
    root = User.objects.create_superuser("root", password=PASSWORD)
    reviewer = User.objects.create_user("reviewer", password=PASSWORD, is_staff=True)
    for codename in ("view_batch", "view_batchline", "view_transcript"):
        reviewer.user_permissions.add(Permission.objects.get(codename=codename))
    return {"dora": dora, "conv": conv, "failed": failed, "ran": ran, "line": line, "root": root,
            "reviewer": reviewer}


def get(client, url, data=None, status=200):
    response = client.get(url, data or {})
    assert response.status_code == status, (url, data, response.status_code)
    return response.content.decode()


def assert_no_text(html, where):
    assert MARK not in html.lower(), where


def text_lookups(model, depth=2, prefix="", seen=()):
    """Every query-string filter path from ``model`` (through up to ``depth`` relations) that ends
    in a text field."""
    paths = [prefix + name for name in sorted(TEXT_FIELDS.get(model._meta.label_lower, ()))]
    if depth:
        for field in model._meta.get_fields():
            if field.is_relation and field.related_model is not None and field.related_model not in seen:
                paths += text_lookups(field.related_model, depth - 1, f"{prefix}{field.name}__", seen + (model,))
    return paths


def test_no_admin_filters_on_text_through_the_query_string(client, world, settings):
    """?body__icontains=… (any text field, also through relations, on every admin) would tell by its
    result count what people wrote, unaudited: refused with a 400 whatever the switch."""
    client.force_login(world["root"])
    checked = 0
    for readable in (False, True):
        settings.SMOLSITE_ADMIN_READ_MESSAGES = readable
        # The leak as reported: the line admin's count answered whether a prompt said ZEBRA.
        for lookup in ("body__icontains", "response__icontains", "error__icontains", "batch__errors__icontains"):
            response = client.get(reverse("admin:batches_batchline_changelist"), {lookup: "ZEBRA"})
            assert response.status_code == 400, lookup
            assert "1 result" not in response.content.decode()
        for model, model_admin in admin_site._registry.items():
            url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
            for lookup in text_lookups(model):
                response = client.get(url, {f"{lookup}__icontains": "ZEBRA"})
                assert response.status_code == 400, (url, lookup, response.status_code)
                checked += 1
    assert checked > 50  # every admin, its own text fields and those it reaches


def test_batch_errors_metadata_and_line_errors_are_hidden_with_the_switch_off(client, world, settings):
    settings.SMOLSITE_ADMIN_READ_MESSAGES = False
    client.force_login(world["root"])
    failed, ran, line = world["failed"], world["ran"], world["line"]
    urls = [reverse("admin:batches_batch_changelist"),
            reverse("admin:batches_batch_change", args=[quote(failed.pk)]),
            reverse("admin:batches_batch_change", args=[quote(ran.pk)]),
            reverse("admin:batches_batchline_changelist"),
            reverse("admin:batches_batchline_change", args=[line.pk]),
            reverse("admin:batches_batchfile_changelist"),
            reverse("admin:batches_batchfile_change", args=[quote(failed.input_file_id)])]
    for url in urls:
        assert_no_text(get(client, url), url)
    # The page that shows them with the switch on says why it shows nothing.
    for batch in (failed, ran):
        text_page = get(client, reverse("admin:batches_batch_text", args=[quote(batch.pk)]))
        assert_no_text(text_page, "the errors page")
        assert "SMOLSITE_ADMIN_READ_MESSAGES is off" in text_page
    # Search matches no text either (the query itself is echoed back).
    for url in (urls[0], urls[3], urls[5]):
        html = get(client, url, {"q": "ZEBRA-OUTPUT"})
        assert "0 results" in html, url
    assert not AuditRecord.objects.exists()


def test_batch_text_with_the_switch_on_needs_a_reason_and_is_audited(client, world, settings):
    settings.SMOLSITE_ADMIN_READ_MESSAGES = True
    client.force_login(world["reviewer"])
    failed, ran = world["failed"], world["ran"]
    # Lists and change pages still show none of it: only the reason-gated page does.
    for url in (reverse("admin:batches_batch_change", args=[quote(failed.pk)]),
                reverse("admin:batches_batchline_change", args=[world["line"].pk]),
                reverse("admin:batches_batchline_changelist")):
        assert_no_text(get(client, url), url)
    text_url = reverse("admin:batches_batch_text", args=[quote(failed.pk)])
    form = get(client, text_url)
    assert 'name="reason"' in form
    assert_no_text(form, "the reason form")
    assert not AuditRecord.objects.exists()
    response = client.post(text_url, {"reason": "Ticket 12: failed batch"})
    assert response.status_code == 302 and response.url == text_url
    html = get(client, text_url)
    assert "ZEBRA-MODEL" in html and "ZEBRA-META" in html
    get(client, text_url)
    records = list(AuditRecord.objects.values_list("action", "username", "owner_username", "reason", "with_text"))
    assert records == [("view", "reviewer", "dora", "Ticket 12: failed batch", True)] * 2
    # Another batch asks again; its line's error (model output) shows after that reason.
    ran_url = reverse("admin:batches_batch_text", args=[quote(ran.pk)])
    assert 'name="reason"' in get(client, ran_url)
    client.post(ran_url, {"reason": "Ticket 13"})
    assert "ZEBRA-OUTPUT" in get(client, ran_url)
    # Staff without the review permission read nothing.
    client.force_login(get_user_model().objects.create_user("staff", password=PASSWORD, is_staff=True))
    assert client.get(text_url).status_code in (302, 403)


def test_titles_with_the_switch_on_need_a_reason(client, world, settings):
    settings.SMOLSITE_ADMIN_READ_MESSAGES = True
    client.force_login(world["root"])
    conv = world["conv"]
    change = reverse("admin:chat_conversation_change", args=[conv.pk])
    for url in (reverse("admin:chat_conversation_changelist"), change, reverse("admin:chat_message_changelist"),
                reverse("admin:chat_conversation_history", args=[conv.pk])):
        assert "ZEBRA-TITLE" not in get(client, url) and "ZEBRA-MESSAGE-ERROR" not in get(client, url), url
    assert not AuditRecord.objects.exists()
    client.post(reverse("admin:chat_conversation_reason", args=[conv.pk]), {"reason": "Ticket 14"})
    get(client, reverse("admin:chat_conversation_transcript", args=[conv.pk]))  # the audited read
    assert AuditRecord.objects.filter(action="view", conversation_id=conv.pk, reason="Ticket 14").count() == 1
    assert "ZEBRA-TITLE" in get(client, reverse("admin:chat_conversation_changelist"))
    assert "ZEBRA-TITLE" in get(client, change)
    assert "ZEBRA-MESSAGE-ERROR" in get(client, reverse("admin:chat_message_changelist"))


def test_deleting_a_user_in_the_admin_lists_their_conversations_without_titles(client, world, settings):
    """The delete confirmation lists everything that goes with the user, conversations by name.
    (A user with messages cannot be deleted here at all: messages are not deletable one by one.)"""
    client.force_login(world["root"])
    eve = get_user_model().objects.create_user("eve", password=PASSWORD)
    conv = Conversation.objects.create(owner=eve, title="ZEBRA-EVE", model="smollm2-135m")
    for readable in (False, True):
        settings.SMOLSITE_ADMIN_READ_MESSAGES = readable
        page = get(client, reverse("admin:auth_user_delete", args=[eve.pk]))
        assert_no_text(page, "the user delete page")
        assert f"Conversation #{conv.pk}" in page
        action = client.post(reverse("admin:auth_user_changelist"),
                             {"action": "delete_selected", "index": "0", "_selected_action": [eve.pk]})
        assert action.status_code == 200 and f"Conversation #{conv.pk}" in action.content.decode()
        assert_no_text(action.content.decode(), "the delete_selected confirmation")
    client.post(reverse("admin:chat_conversation_reason", args=[conv.pk]), {"reason": "Ticket 15"})
    assert "ZEBRA-EVE" in get(client, reverse("admin:auth_user_delete", args=[eve.pk]))
    response = client.post(reverse("admin:auth_user_delete", args=[eve.pk]), {"post": "yes"})
    assert response.status_code == 302 and not Conversation.objects.filter(pk=conv.pk).exists()


@pytest.fixture
def tool_world(world):
    """An answer of dora's chat that called a tool: its arguments and its result carry ZEBRA."""
    conv = Conversation.objects.create(owner=world["dora"], title="Tools", model="smollm2-135m", tools=["calculator"])
    question = Message.objects.create(conversation=conv, role="user", content="ZEBRA-QUESTION")
    answer = Message.objects.create(conversation=conv, parent=question, role="assistant", content="", status="done",
                                    finish_reason="tool_calls", options={"tool_round": 0})
    call = ToolCall.objects.create(message=answer, index=0, call_id="call_1_0", name="calculator",
                                   arguments='{"expression": "ZEBRA-ARGS"}', output="ZEBRA-RESULT", status="ok",
                                   duration=0.25)
    conv.current_leaf = answer
    conv.save(update_fields=["current_leaf"])
    return {**world, "tool_conv": conv, "tool_answer": answer, "call": call}


def test_tool_arguments_and_results_are_hidden_with_the_switch_off(client, tool_world, settings):
    import io
    import zipfile

    settings.SMOLSITE_ADMIN_READ_MESSAGES = False
    client.force_login(tool_world["root"])
    conv, answer = tool_world["tool_conv"], tool_world["tool_answer"]
    transcript = get(client, reverse("admin:chat_conversation_transcript", args=[conv.pk]))
    assert_no_text(transcript, "the transcript")
    # What is shown: that the answer called calculator, and how that went.
    assert "calculator" in transcript and 'id="call-' in transcript and "0.25 s" in transcript
    for url in (reverse("admin:chat_conversation_changelist"), reverse("admin:chat_conversation_change", args=[conv.pk]),
                reverse("admin:chat_message_changelist"), reverse("admin:chat_message_change", args=[answer.pk])):
        assert_no_text(get(client, url), url)
    for action in ("export_zip", "export_json", "export_markdown"):
        response = client.post(reverse("admin:chat_conversation_changelist"), {
            "action": action, "index": "0", "select_across": "0", "_selected_action": [conv.pk]})
        assert response.status_code == 200, action
        if action == "export_zip":
            with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
                texts = [archive.read(n).decode() for n in archive.namelist()]
        else:
            texts = [response.content.decode()]
        for text in texts:
            assert_no_text(text, action)
        assert any("calculator" in text for text in texts), action
    # The search does not reach them, and no query-string filter does.
    assert "0 results" in get(client, reverse("admin:chat_conversation_changelist"), {"q": "ZEBRA-ARGS"})
    for lookup in ("messages__tool_calls__arguments__icontains", "messages__tool_calls__output__icontains"):
        assert client.get(reverse("admin:chat_conversation_changelist"), {lookup: "ZEBRA"}).status_code == 400


def test_tool_arguments_and_results_with_the_switch_on_need_a_reason(client, tool_world, settings):
    settings.SMOLSITE_ADMIN_READ_MESSAGES = True
    client.force_login(tool_world["root"])
    conv = tool_world["tool_conv"]
    url = reverse("admin:chat_conversation_transcript", args=[conv.pk])
    assert client.get(url).status_code == 302  # to the reason form
    client.post(reverse("admin:chat_conversation_reason", args=[conv.pk]), {"reason": "Ticket 16"})
    html = get(client, url)
    assert "ZEBRA-ARGS" in html and "ZEBRA-RESULT" in html
