"""The chat pages over HTTP: accounts, ownership, the sidebar, settings and branches."""
import re

import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings
from django.urls import reverse

from chat import actions
from chat.models import Conversation, Message
from inference.hookspecs import hookimpl

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery-9"
HX = {"HTTP_HX_REQUEST": "true"}


def make_user(username, **extra):
    return get_user_model().objects.create_user(username, password=PASSWORD, **extra)


def make_conversation(owner, title="New chat", model="smollm2-135m", **extra):
    return Conversation.objects.create(owner=owner, title=title, model=model, **extra)


def add_turn(conv, question, answer, parent=None):
    """A finished user/assistant pair below ``parent`` (default: the current leaf)."""
    parent = parent if parent is not None else conv.current_leaf
    user = Message.objects.create(conversation=conv, parent=parent, role="user", content=question)
    reply = Message.objects.create(conversation=conv, parent=user, role="assistant", content=answer,
                                   status="done", model_name=conv.model)
    conv.current_leaf = reply
    conv.save(update_fields=["current_leaf"])
    return user, reply


def finish(message, content):
    Message.objects.filter(pk=message.pk).update(status="done", content=content)


@pytest.fixture
def alice(client):
    user = make_user("alice")
    client.force_login(user)
    return user


def signup(client, username):
    return client.post(reverse("signup"), {"username": username, "password1": PASSWORD, "password2": PASSWORD})


# ---- accounts ---------------------------------------------------------------------------

def test_first_signup_is_admin_and_later_ones_are_not(client):
    response = signup(client, "root")
    assert response.status_code == 302 and response.url == reverse("chat:index")
    first = get_user_model().objects.get(username="root")
    assert first.is_staff and first.is_superuser
    # Signed in straight away: the chat opens.
    assert client.get(reverse("chat:index"), follow=True).status_code == 200

    client.post(reverse("logout"))
    signup(client, "bob")
    second = get_user_model().objects.get(username="bob")
    assert not second.is_staff and not second.is_superuser
    assert get_user_model().objects.get(username="root").is_superuser


def test_signup_with_mismatched_passwords_creates_nobody(client):
    response = client.post(reverse("signup"), {"username": "x", "password1": PASSWORD, "password2": PASSWORD + "!"})
    assert response.status_code == 400
    assert "didn’t match" in response.content.decode() or "didn't match" in response.content.decode()
    assert not get_user_model().objects.exists()


@override_settings(SMOLSITE_SIGNUP_OPEN=False)
def test_signup_closed(client):
    assert client.get(reverse("signup")).status_code == 403
    response = signup(client, "eve")
    assert response.status_code == 403 and b"Sign-up is closed" in response.content
    assert not get_user_model().objects.exists()
    assert reverse("signup") not in client.get(reverse("login")).content.decode()


def test_login_page_links_signup_while_open(client):
    assert reverse("signup") in client.get(reverse("login")).content.decode()


def test_login_and_logout(client):
    make_user("carol")
    response = client.post(reverse("login"), {"username": "carol", "password": PASSWORD})
    assert response.status_code == 302 and response.url == reverse("chat:index")
    assert client.get(reverse("logout")).status_code == 405  # logging out changes state: POST only
    response = client.post(reverse("logout"))
    assert response.status_code == 302 and response.url == reverse("login")
    assert client.get(reverse("chat:index")).status_code == 302


def test_wrong_password_is_refused(client):
    make_user("carol")
    response = client.post(reverse("login"), {"username": "carol", "password": "nope-nope-nope"})
    assert response.status_code == 200 and b"enter a correct username and password" in response.content
    assert client.get(reverse("chat:index")).url.startswith(reverse("login"))


@pytest.mark.parametrize("name, method", [
    ("chat:index", "get"), ("chat:list", "get"), ("chat:new", "post"),
])
def test_pages_need_login(client, name, method):
    response = getattr(client, method)(reverse(name))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login") + "?next=")


def test_conversation_pages_need_login(client):
    conv = make_conversation(make_user("dora"))
    for url in (reverse("chat:conversation", args=[conv.pk]), reverse("chat:thread", args=[conv.pk])):
        response = client.get(url)
        assert response.status_code == 302 and response.url.startswith(reverse("login"))
    response = client.post(reverse("chat:delete", args=[conv.pk]))
    assert response.status_code == 302 and Conversation.objects.filter(pk=conv.pk).exists()


def test_csrf_is_enforced(alice):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    conv = make_conversation(alice, "Keep me")
    assert strict.post(reverse("chat:delete", args=[conv.pk])).status_code == 403
    assert Conversation.objects.filter(pk=conv.pk).exists()
    # The page hands htmx the token on <body>.
    page = strict.get(reverse("chat:conversation", args=[conv.pk])).content.decode()
    assert re.search(r'<body[^>]*hx-headers=\'\{"X-CSRFToken": "[A-Za-z0-9]{20,}"\}\'', page)


# ---- ownership --------------------------------------------------------------------------

def test_another_users_conversation_is_404_everywhere(client, alice):
    mallory_conv = make_conversation(make_user("mallory"), "Secret plans")
    user, reply = add_turn(mallory_conv, "the secret", "is safe")
    pk = mallory_conv.pk
    requests = [
        ("get", "chat:conversation", {}),
        ("get", "chat:thread", {}),
        ("get", "chat:item", {}),
        ("get", "chat:rename", {}),
        ("post", "chat:rename", {"title": "pwned"}),
        ("post", "chat:delete", {}),
        ("post", "chat:settings", {"temperature": "1", "top_p": "1", "max_tokens": "5", "system_prompt": "x"}),
        ("post", "chat:model", {"model": "smollm2-135m"}),
        ("post", "chat:branch", {"message": str(user.pk)}),
    ]
    for method, name, data in requests:
        response = getattr(client, method)(reverse(name, args=[pk]), data, **HX)
        assert response.status_code == 404, name
    mallory_conv.refresh_from_db()
    assert mallory_conv.title == "Secret plans" and mallory_conv.system_prompt == ""
    # Nor does it leak through search.
    assert b"Secret plans" not in client.get(reverse("chat:list"), {"q": "secret"}, **HX).content


def test_branch_to_a_message_of_another_conversation_is_refused(client, alice):
    mine = make_conversation(alice)
    _, my_reply = add_turn(mine, "q", "a")
    other = make_conversation(make_user("mallory"))
    _, their_reply = add_turn(other, "q2", "a2")
    response = client.post(reverse("chat:branch", args=[mine.pk]), {"message": their_reply.pk}, **HX)
    assert response.status_code == 404
    mine.refresh_from_db()
    assert mine.current_leaf_id == my_reply.pk


# ---- the chat page -------------------------------------------------------------------------

def test_index_creates_a_first_chat_and_then_opens_the_latest(client, alice):
    response = client.get(reverse("chat:index"))
    first = Conversation.objects.get(owner=alice)
    assert response.url == reverse("chat:conversation", args=[first.pk])
    later = make_conversation(alice, "Later")
    assert client.get(reverse("chat:index")).url == reverse("chat:conversation", args=[later.pk])


def test_new_chat_reuses_an_empty_one(client, alice):
    first = client.post(reverse("chat:new")).url
    assert client.post(reverse("chat:new")).url == first
    conv = Conversation.objects.get(owner=alice)
    add_turn(conv, "hello", "hi")
    assert client.post(reverse("chat:new")).url != first
    assert Conversation.objects.filter(owner=alice).count() == 2


def test_new_chat_never_reuses_an_api_or_batch_conversation(client, alice):
    """An API request's conversation has no messages until its rows are made (and batch lines
    have their own): New chat must not open one of those as the user's fresh chat."""
    api = Conversation.objects.create(owner=alice, model="smollm2-135m", source="api")
    batch = Conversation.objects.create(owner=alice, model="smollm2-135m", source="batch")
    url = client.post(reverse("chat:new")).url
    assert url not in (reverse("chat:conversation", args=[api.pk]), reverse("chat:conversation", args=[batch.pk]))
    assert Conversation.objects.get(owner=alice, source="chat").pk == int(url.rstrip("/").split("/")[-1])


def test_conversation_page_shows_the_branch_and_escapes_text(client, alice):
    conv = make_conversation(alice, "Markup test")
    add_turn(conv, "<script>alert(1)</script> **not bold**", "Here is **bold** <img src=x onerror=alert(1)>")
    page = client.get(reverse("chat:conversation", args=[conv.pk])).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; **not bold**" in page
    assert "<strong>bold</strong>" in page
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert 'ws-connect="/ws/chat/%d/"' % conv.pk in page
    assert page.count('class="msg ') == 2


def test_sidebar_lists_own_chats_newest_first(client, alice):
    from datetime import timedelta
    from django.utils import timezone

    now = timezone.now()
    for i, title in enumerate(["Oldest", "Middle", "Newest"]):
        make_conversation(alice, title, updated_at=now - timedelta(minutes=10 - i))
    make_conversation(make_user("bob"), "Bob's chat")
    # A batch's lines are conversations too; they live on the Batches page, not in the sidebar,
    # and the chat page never opens one by default.
    make_conversation(alice, "Batch line", source="batch", updated_at=now)
    html = client.get(reverse("chat:list"), **HX).content.decode()
    titles = re.findall(r'<span class="conv-title">([^<]*)</span>', html)
    assert titles == ["Newest", "Middle", "Oldest"]
    assert "Batch line" not in client.get(reverse("chat:index"), follow=True).content.decode()


def test_stats_and_states_render_under_answers(client, alice):
    conv = make_conversation(alice)
    _, reply = add_turn(conv, "q", "a")
    Message.objects.filter(pk=reply.pk).update(tokens_per_second=123.45, ttft=0.25, completion_tokens=17)
    _, failed = add_turn(conv, "q2", "")
    Message.objects.filter(pk=failed.pk).update(status="interrupted", error="The worker stopped.")
    page = client.get(reverse("chat:conversation", args=[conv.pk])).content.decode()
    assert "123.5 tok/s" in page and "0.25 s to first token" in page and "17 tokens" in page
    assert "Interrupted: The worker stopped." in page
    assert re.search(r'data-regenerate="%d">.*Retry' % failed.pk, page, re.S)
    assert "token limit" not in page
    Message.objects.filter(pk=reply.pk).update(finish_reason="length")
    page = client.get(reverse("chat:conversation", args=[conv.pk])).content.decode()
    assert "Cut off at the 17-token limit" in page


# ---- rename / delete -----------------------------------------------------------------------

def test_rename_inline(client, alice):
    conv = make_conversation(alice, "Old name")
    form = client.get(reverse("chat:rename", args=[conv.pk]), **HX)
    assert form.status_code == 200 and b'name="title"' in form.content and b"<html" not in form.content
    response = client.post(reverse("chat:rename", args=[conv.pk]), {"title": "  New name  "}, **HX)
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html and 'id="conv-%d"' % conv.pk in html and "New name" in html
    conv.refresh_from_db()
    assert conv.title == "New name"


def test_rename_to_blank_is_refused(client, alice):
    conv = make_conversation(alice, "Keep")
    response = client.post(reverse("chat:rename", args=[conv.pk]), {"title": "   "}, **HX)
    assert response.status_code == 422 and b"This field is required" in response.content
    conv.refresh_from_db()
    assert conv.title == "Keep"


def test_rename_without_htmx_redirects(client, alice):
    conv = make_conversation(alice, "Old")
    response = client.post(reverse("chat:rename", args=[conv.pk]), {"title": "Plain form"})
    assert response.status_code == 302 and response.url == reverse("chat:conversation", args=[conv.pk])
    conv.refresh_from_db()
    assert conv.title == "Plain form"


def test_delete_from_another_page_removes_the_item(client, alice):
    shown = make_conversation(alice, "Shown")
    doomed = make_conversation(alice, "Doomed")
    add_turn(doomed, "q", "a")
    here = "http://testserver" + reverse("chat:conversation", args=[shown.pk])
    response = client.post(reverse("chat:delete", args=[doomed.pk]), HTTP_HX_CURRENT_URL=here, **HX)
    assert response.status_code == 200 and response.content == b""
    assert "HX-Redirect" not in response and response["HX-Trigger"] == "conversations-changed"
    assert not Conversation.objects.filter(pk=doomed.pk).exists()
    assert not Message.objects.filter(conversation_id=doomed.pk).exists()


def test_delete_the_open_chat_redirects(client, alice):
    conv = make_conversation(alice, "Open")
    here = "http://testserver" + reverse("chat:conversation", args=[conv.pk])
    response = client.post(reverse("chat:delete", args=[conv.pk]), HTTP_HX_CURRENT_URL=here, **HX)
    assert response["HX-Redirect"] == reverse("chat:index")
    assert not Conversation.objects.filter(pk=conv.pk).exists()


def test_delete_requires_post(client, alice):
    conv = make_conversation(alice)
    assert client.get(reverse("chat:delete", args=[conv.pk])).status_code == 405
    assert Conversation.objects.filter(pk=conv.pk).exists()


# ---- search -------------------------------------------------------------------------------

def test_search_by_title_and_by_message_text(client, alice):
    pasta = make_conversation(alice, "Pasta recipes")
    biology = make_conversation(alice, "Homework")
    add_turn(biology, "What is a cell?", "The mitochondria is the powerhouse of the cell.")
    make_conversation(alice, "Unrelated")

    by_title = client.get(reverse("chat:list"), {"q": "pasta"}, **HX).content.decode()
    assert "<html" not in by_title and 'id="conversation-list"' in by_title
    assert "Pasta recipes" in by_title and "Homework" not in by_title and "Unrelated" not in by_title

    by_text = client.get(reverse("chat:list"), {"q": "MITOCHONDRIA"}, **HX).content.decode()
    assert "Homework" in by_text and "Pasta recipes" not in by_text
    assert "mitochondria is the powerhouse" in by_text  # the snippet shows why it matched
    assert 'id="conv-%d"' % biology.pk in by_text and 'id="conv-%d"' % pasta.pk not in by_text

    nothing = client.get(reverse("chat:list"), {"q": "quantum"}, **HX).content.decode()
    assert "No chats match" in nothing


def test_search_escapes_the_query(client, alice):
    html = client.get(reverse("chat:list"), {"q": "<b>x</b>"}, **HX).content.decode()
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html


def test_search_without_htmx_filters_the_page_sidebar(client, alice):
    conv = make_conversation(alice, "Findable")
    make_conversation(alice, "Hidden one")
    response = client.get(reverse("chat:list"), {"q": "findable", "current": conv.pk})
    assert response.status_code == 302
    page = client.get(response.url).content.decode()
    sidebar = page.split('id="conversation-list"')[1]
    assert "Findable" in sidebar and "Hidden one" not in sidebar


# ---- settings ---------------------------------------------------------------------------

def settings_data(**overrides):
    data = {"system_prompt": "Be brief.", "temperature": "0.3", "top_p": "0.9", "max_tokens": "256"}
    data.update(overrides)
    return data


def test_settings_save(client, alice):
    conv = make_conversation(alice)
    response = client.post(reverse("chat:settings", args=[conv.pk]), settings_data(), **HX)
    assert response.status_code == 200 and b"Saved." in response.content and b"<html" not in response.content
    conv.refresh_from_db()
    assert (conv.system_prompt, conv.temperature, conv.top_p, conv.max_tokens) == ("Be brief.", 0.3, 0.9, 256)


@pytest.mark.parametrize("field, value, message", [
    ("temperature", "5", "Temperature must be between 0 and 2."),
    ("temperature", "-0.1", "Temperature must be between 0 and 2."),
    ("temperature", "hot", "Enter a number."),
    ("temperature", "nan", "Enter a number."),
    ("top_p", "0", "Top p must be above 0 and at most 1."),
    ("top_p", "1.5", "Top p must be above 0 and at most 1."),
    ("max_tokens", "0", "Max tokens must be between 1 and 8,192"),
    ("max_tokens", "100000", "Max tokens must be between 1 and 8,192"),
])
def test_settings_validation(client, alice, field, value, message):
    conv = make_conversation(alice)
    response = client.post(reverse("chat:settings", args=[conv.pk]), settings_data(**{field: value}), **HX)
    assert response.status_code == 422
    html = response.content.decode()
    assert message in html
    assert re.search(r'name="%s"[^>]*aria-invalid="true"' % field, html)
    assert "Saved." not in html
    conv.refresh_from_db()
    assert (conv.system_prompt, conv.temperature, conv.top_p, conv.max_tokens) == ("", 0.7, 0.95, 1024)


def test_settings_without_htmx(client, alice):
    conv = make_conversation(alice)
    bad = client.post(reverse("chat:settings", args=[conv.pk]), settings_data(temperature="9"))
    assert bad.status_code == 422 and b"<html" in bad.content and b"Temperature must be between 0 and 2." in bad.content
    good = client.post(reverse("chat:settings", args=[conv.pk]), settings_data())
    assert good.status_code == 302 and good.url == reverse("chat:conversation", args=[conv.pk])


class ThinkingFeature:
    """A plugin that says every model can think."""

    @hookimpl
    def model_features(self, model, info):
        return ["thinking"]


def test_thinking_toggle_hidden_without_the_feature(client, alice):
    conv = make_conversation(alice, thinking=True)
    page = client.get(reverse("chat:conversation", args=[conv.pk])).content.decode()
    assert 'name="thinking"' not in page
    # A posted value for a setting the model lacks is ignored, not stored.
    client.post(reverse("chat:settings", args=[conv.pk]), settings_data(), **HX)
    conv.refresh_from_db()
    assert conv.thinking is True


def test_thinking_toggle_shown_with_the_feature(client, alice, plugin_manager_reset):
    pm = plugin_manager_reset.build_plugin_manager()
    pm.register(ThinkingFeature(), name="test-thinking")
    plugin_manager_reset.reset(pm)
    conv = make_conversation(alice, thinking=True)
    page = client.get(reverse("chat:conversation", args=[conv.pk])).content.decode()
    assert re.search(r'<input type="checkbox" name="thinking"[^>]*checked', page)
    # An unticked checkbox is absent from the form: thinking turns off.
    client.post(reverse("chat:settings", args=[conv.pk]), settings_data(), **HX)
    conv.refresh_from_db()
    assert conv.thinking is False


# ---- model picker ---------------------------------------------------------------------------

TWO_MODELS = {
    "smollm2-135m": {"path": "/nonexistent.gguf", "n_ctx": 8192},
    "echo": {"path": "", "backend": "echo", "n_ctx": 4096},
}


@override_settings(SMOLSITE_MODELS=TWO_MODELS)
def test_model_picker(client, alice):
    conv = make_conversation(alice)
    page = client.get(reverse("chat:conversation", args=[conv.pk])).content.decode()
    assert '<option value="echo">echo</option>' in page
    response = client.post(reverse("chat:model", args=[conv.pk]), {"model": "echo"}, **HX)
    assert response.status_code == 200 and b'id="settings-form"' in response.content
    assert b"4096-token context" in response.content
    conv.refresh_from_db()
    assert conv.model == "echo"
    # Max tokens is checked against the chosen model's context.
    response = client.post(reverse("chat:settings", args=[conv.pk]), settings_data(max_tokens="5000"), **HX)
    assert response.status_code == 422 and b"between 1 and 4,096" in response.content


@override_settings(SMOLSITE_MODELS=TWO_MODELS)
def test_unknown_model_is_refused(client, alice):
    conv = make_conversation(alice)
    response = client.post(reverse("chat:model", args=[conv.pk]), {"model": "gpt-17"}, **HX)
    assert response.status_code == 422
    conv.refresh_from_db()
    assert conv.model == "smollm2-135m"


@override_settings(SMOLSITE_MODELS=TWO_MODELS)
def test_new_chat_keeps_the_last_model(client, alice):
    conv = make_conversation(alice, model="echo")
    add_turn(conv, "q", "a")
    url = client.post(reverse("chat:new")).url
    new = Conversation.objects.exclude(pk=conv.pk).get(owner=alice)
    assert url == reverse("chat:conversation", args=[new.pk]) and new.model == "echo"


# ---- branches -----------------------------------------------------------------------------

def test_branch_navigation(client, alice):
    conv = make_conversation(alice)
    _, first = add_turn(conv, "Tell me a joke", "First answer")
    second = actions.regenerate(conv.pk)
    finish(second, "Second answer")

    page = client.get(reverse("chat:conversation", args=[conv.pk])).content.decode()
    assert "Second answer" in page and "First answer" not in page
    assert '<span class="branch-pos">2/2</span>' in page
    assert 'data-branch="%d"' % first.pk in page

    response = client.post(reverse("chat:branch", args=[conv.pk]), {"message": first.pk}, **HX)
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html and html.lstrip().startswith('<div id="thread"')
    assert "First answer" in html and "Second answer" not in html
    assert '<span class="branch-pos">1/2</span>' in html and 'data-branch="%d"' % second.pk in html
    conv.refresh_from_db()
    assert conv.current_leaf_id == first.pk


def test_branch_to_an_edited_question_follows_its_newest_answer(client, alice):
    conv = make_conversation(alice)
    question, _ = add_turn(conv, "Original question", "Original answer")
    edited_reply = actions.edit(conv.pk, question.pk, "Edited question")
    finish(edited_reply, "Edited answer")
    html = client.post(reverse("chat:branch", args=[conv.pk]), {"message": question.pk}, **HX).content.decode()
    assert "Original question" in html and "Original answer" in html and "Edited" not in html
    html = client.post(reverse("chat:branch", args=[conv.pk]), {"message": edited_reply.parent_id},
                       **HX).content.decode()
    assert "Edited question" in html and "Edited answer" in html


def test_branch_switch_waits_for_the_running_answer(client, alice):
    conv = make_conversation(alice)
    _, first = add_turn(conv, "q", "a")
    running = actions.regenerate(conv.pk)  # pending until a worker takes it
    response = client.post(reverse("chat:branch", args=[conv.pk]), {"message": first.pk}, **HX)
    assert response.status_code == 409 and b"still being generated" in response.content
    conv.refresh_from_db()
    assert conv.current_leaf_id == running.pk


def test_branch_needs_a_message_id(client, alice):
    conv = make_conversation(alice)
    assert client.post(reverse("chat:branch", args=[conv.pk]), {"message": "x"}, **HX).status_code == 400


def test_thread_partial(client, alice):
    conv = make_conversation(alice)
    _, reply = add_turn(conv, "q", "streamed so far")
    Message.objects.filter(pk=reply.pk).update(status="streaming", stream_seq=7)
    html = client.get(reverse("chat:thread", args=[conv.pk]), **HX).content.decode()
    assert html.lstrip().startswith('<div id="thread"')
    assert re.search(r'id="msg-%d"[^>]*data-status="streaming" data-seq="7"' % reply.pk, html)
    # Raw text while streaming: Markdown is rendered only once the answer is final.
    assert '<div class="content streaming">streamed so far</div>' in html


# ---- admin ------------------------------------------------------------------------------

def test_admin_lists_conversations_and_messages(client):
    """Metadata only: with the default privacy setting no admin page shows message text (the
    review tests cover each path and the reason-gated reading)."""
    admin = make_user("root", is_staff=True, is_superuser=True)
    client.force_login(admin)
    conv = make_conversation(make_user("bob"), "Bob asks")
    _, reply = add_turn(conv, "What is 2+2?", "Four.")
    changelist = client.get(reverse("admin:chat_conversation_changelist"), {"q": "bob"}).content.decode()
    assert f"Conversation #{conv.pk}" in changelist
    change = client.get(reverse("admin:chat_conversation_change", args=[conv.pk])).content.decode()
    assert "What is 2+2?" not in change and "Four." not in change
    messages = client.get(reverse("admin:chat_message_changelist"),
                          {"status__exact": "done", "role__exact": "assistant"}).content.decode()
    assert 'href="/admin/chat/message/%d/change/' % reply.pk in messages
    assert 'href="/admin/chat/message/%d/change/' % reply.parent_id not in messages  # the role filter


def test_admin_is_closed_to_normal_users(client, alice):
    response = client.get(reverse("admin:chat_conversation_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response.url


def test_a_chat_whose_model_was_removed_still_opens(client, alice):
    conv = make_conversation(alice, model="retired-model")
    page = client.get(reverse("chat:conversation", args=[conv.pk])).content.decode()
    assert "no longer configured on the server" in page
    assert '<option value="retired-model" selected disabled>retired-model (gone)</option>' in page


# ---- scale ---------------------------------------------------------------------------------

def _queries_for(client, url, **headers):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url, **headers).status_code == 200
    return len(ctx.captured_queries)


def test_page_and_search_query_counts_do_not_grow_with_the_history(client, alice):
    small = make_conversation(alice, "small")
    for i in range(3):
        add_turn(small, f"question {i}", f"answer {i}")
    big = make_conversation(alice, "big")
    for i in range(300):
        add_turn(big, f"question {i}", f"answer {i} with **markdown**")
    for i in range(40):
        make_conversation(alice, f"other {i}")
    small_url, big_url = (reverse("chat:conversation", args=[c.pk]) for c in (small, big))
    assert _queries_for(client, big_url) == _queries_for(client, small_url)
    assert client.get(big_url).content.decode().count('class="msg ') == 600
    # Search: one query for the matches plus one snippet query per chat matched by message text.
    url = reverse("chat:list") + "?q=answer 299"
    assert _queries_for(client, url, **HX) == _queries_for(client, reverse("chat:list") + "?q=small", **HX) + 1
    assert "big" in client.get(url, **HX).content.decode()


def test_a_threads_answers_are_rendered_once_not_on_every_turn(alice, monkeypatch):
    """Each new turn re-renders the tab's whole thread: answers seen before come from the cache."""
    import uuid

    from chat import markdown
    from chat.rendering import render_thread

    conv = make_conversation(alice)
    tag = uuid.uuid4().hex  # texts no earlier test rendered
    for i in range(30):
        add_turn(conv, f"Question {i}", f"Answer {i} {tag}\n\n```python\nx = {i}\n```")
    renders = []
    real = markdown._md.render
    monkeypatch.setattr(markdown._md, "render", lambda text: renders.append(text) or real(text))
    first = render_thread(conv)
    assert len(renders) == 30 and f"Answer 29 {tag}" in first
    add_turn(conv, "One more", f"The last answer {tag}")
    second = render_thread(conv)
    assert renders[30:] == [f"The last answer {tag}"]  # only the new answer was rendered
    assert first.split(f"Answer 29 {tag}")[0] in second  # the same HTML for the earlier answers
    huge = "word " * (markdown.CACHE_MAX_CHARS // 5 + 1)  # too big to keep: rendered each time
    markdown.render_markdown(huge)
    markdown.render_markdown(huge)
    assert renders.count(huge) == 2
