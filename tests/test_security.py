"""Review findings (issue 12): search cost, sockets after sign-out, the first administrator,
frames and parameters that crashed, and production settings. Runs on SQLite and, with
DATABASE_URL, on PostgreSQL."""
import asyncio
import json
import os
import re
import stat
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import HttpCommunicator, WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

import accounts.signup
from chat import sidebar
from chat.models import Conversation, Message

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery-9"
HX = {"HTTP_HX_REQUEST": "true"}
POSTGRES = connection.vendor == "postgresql"


def make_user(username, **extra):
    return get_user_model().objects.create_user(username, password=PASSWORD, **extra)


def make_conversation(owner, title="New chat", model="smollm2-135m", **extra):
    return Conversation.objects.create(owner=owner, title=title, model=model, **extra)


def add_turn(conv, question, answer):
    user = Message.objects.create(conversation=conv, parent=conv.current_leaf, role="user", content=question)
    reply = Message.objects.create(conversation=conv, parent=user, role="assistant", content=answer, status="done",
                                   model_name=conv.model)
    conv.current_leaf = reply
    conv.save(update_fields=["current_leaf"])
    return user, reply


@pytest.fixture
def alice(client, db):
    user = make_user("alice")
    client.force_login(user)
    return user


def listed(client, query, **params):
    response = client.get(reverse("chat:list"), {"q": query, **params}, **HX)
    assert response.status_code == 200
    return response.content.decode()


# ---- 1. search ----------------------------------------------------------------------------

def test_search_query_is_capped(client, alice, settings):
    settings.SMOLSITE_SEARCH_MAX_CHARS = 200
    conv = make_conversation(alice, "Dragons")
    add_turn(conv, "tell me", "a" * 300)
    with CaptureQueriesContext(connection) as ctx:
        html = listed(client, "a" * 8000)
    # No statement carries more of the query than the cap (plus SQL around it).
    assert max(len(q["sql"]) for q in ctx.captured_queries) < 200 + 2000
    assert "a" * 201 not in html  # the search box shows the query as searched
    assert "match “%s”" % ("a" * 200) in html


@pytest.mark.parametrize("query, expected", [
    ("mitochondria", "Homework"),
    ("MITOCHONDRIA", "Homework"),
    ("powerhouse cell", "Homework"),  # words anywhere in the message
    ("mitochond", "Homework"),  # a word being typed
    ("pasta", "Pasta recipes"),  # by title
    ("Recip", "Pasta recipes"),
])
def test_search_finds_words_and_prefixes_on_this_database(client, alice, query, expected):
    make_conversation(alice, "Pasta recipes")
    biology = make_conversation(alice, "Homework")
    add_turn(biology, "What is a cell?", "The mitochondria is the powerhouse of the cell.")
    make_conversation(alice, "Unrelated")
    html = listed(client, query)
    assert expected in html
    assert "Unrelated" not in html
    assert ("Homework" in html) + ("Pasta recipes" in html) == 1


def test_search_snippet_and_another_users_text(client, alice):
    conv = make_conversation(alice, "Homework")
    add_turn(conv, "q", "First line.\n\nThe mitochondria is the powerhouse of the cell.")
    bob = make_user("bob")
    add_turn(make_conversation(bob, "Bob's"), "q", "mitochondria for bob")
    html = listed(client, "mitochondria")
    assert "mitochondria is the powerhouse" in html
    assert "Bob&#x27;s" not in html and "Bob's" not in html and "for bob" not in html


def test_search_query_count_is_constant(client, alice):
    for i in range(30):
        conv = make_conversation(alice, f"chat {i}")
        add_turn(conv, f"question {i}", f"the zebra answer {i}")
    with CaptureQueriesContext(connection) as few:
        listed(client, "nothing matches this")
    with CaptureQueriesContext(connection) as many:
        html = listed(client, "zebra")
    assert html.count('class="conv-item') == 30
    # hits + chats + one query for all 30 snippets: no query per chat.
    assert len(many.captured_queries) <= len(few.captured_queries) + 2


@pytest.mark.skipif(POSTGRES, reason="SQLite scans a bounded window; PostgreSQL uses its index")
def test_sqlite_scans_only_the_most_recent_messages(client, alice, settings):
    settings.SMOLSITE_SEARCH_SCAN_MESSAGES = 10
    old = make_conversation(alice, "Old")
    add_turn(old, "q", "aardvark")
    new = make_conversation(alice, "New")
    for i in range(5):
        add_turn(new, "q", f"aardvark {i}")
    html = listed(client, "aardvark")
    assert "New" in html and ">Old<" not in html and 'id="conv-%d"' % old.pk not in html
    settings.SMOLSITE_SEARCH_SCAN_MESSAGES = 100
    assert 'id="conv-%d"' % old.pk in listed(client, "aardvark")
    # Linear-time matching (instr, not LIKE '%…%'), for at most MAX_SCAN_WORDS words.
    with CaptureQueriesContext(connection) as ctx:
        listed(client, " ".join(f"word{i}" for i in range(50)))
    hits = next(q["sql"] for q in ctx.captured_queries if '"chat_message"."content"' in q["sql"])
    assert " LIKE " not in hits
    assert hits.count('INSTR(LOWER("chat_message"."content")') == sidebar.MAX_SCAN_WORDS


@pytest.mark.skipif(not POSTGRES, reason="PostgreSQL's full-text index")
def test_postgres_search_uses_the_full_text_index(alice):
    conv = make_conversation(alice, "t")
    add_turn(conv, "q", "zebra crossing")
    # The very condition search() filters on can use the index (the expressions match).
    qn = connection.ops.quote_name
    condition = sidebar.FTS_SQL.format(table=qn("chat_message"), column=qn("content"))
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f'EXPLAIN SELECT id FROM "chat_message" WHERE {condition}', ["'zeb':*", "zeb"])
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "chat_message_content_fts" in plan, plan
    assert [c for c, _ in sidebar._message_hits(alice, "zeb")] == [conv.pk]


# ---- 5. HTTP 500s --------------------------------------------------------------------------

@pytest.mark.parametrize("params", [
    {"current": "²"}, {"current": "9" * 5000}, {"current": "99999999999999999999"}, {"current": "-1"},
    {"q": "\x00"}, {"q": "a\x00b"}, {"q": "²"}, {"q": "%"}, {"q": "_"}, {"q": "'\\"},
])
@pytest.mark.parametrize("htmx", [True, False])
def test_sidebar_parameters_never_500(client, alice, params, htmx):
    make_conversation(alice, "x")
    response = client.get(reverse("chat:list"), params, **(HX if htmx else {}))
    assert response.status_code in (200, 302)


@pytest.mark.parametrize("message", ["²", "9" * 5000, "99999999999999999999", "", "0", "1.5"])
def test_branch_message_ids_never_500(client, alice, message):
    conv = make_conversation(alice)
    response = client.post(reverse("chat:branch", args=[conv.pk]), {"message": message}, **HX)
    assert response.status_code in (400, 404)


@pytest.mark.parametrize("path", ["/c/%s/" % ("9" * 5000), "/c/99999999999999999999/",
                                  "/c/99999999999999999999/thread/"])
def test_huge_ids_in_paths_are_404(client, alice, path):
    assert client.get(path).status_code == 404


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=st.text(max_size=300), current=st.text(max_size=30), message=st.text(max_size=30))
def test_fuzz_query_parameters(client, alice, q, current, message):
    conv = Conversation.objects.filter(owner=alice).first() or make_conversation(alice, "fuzz")
    assert client.get(reverse("chat:list"), {"q": q, "current": current}, **HX).status_code == 200
    assert client.get(reverse("chat:list"), {"q": q, "current": current}).status_code == 302
    assert client.get(reverse("chat:conversation", args=[conv.pk]), {"q": q}).status_code == 200
    assert client.post(reverse("chat:branch", args=[conv.pk]), {"message": message}, **HX).status_code in (400, 404)


# ---- 4. the first administrator --------------------------------------------------------------

def signup(client, username):
    return client.post(reverse("signup"), {"username": username, "password1": PASSWORD, "password2": PASSWORD})


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_first_signups_make_one_admin(monkeypatch):
    """Both sign-ups wait for each other after creating their account and before deciding: without
    a lock both see only themselves (PostgreSQL) and both become superusers."""
    barrier = threading.Barrier(2)
    original = accounts.signup.promote_if_first

    def slow_promote(user):
        try:
            barrier.wait(timeout=3)  # with the lock the other never arrives: go on alone
        except threading.BrokenBarrierError:
            pass
        return original(user)

    monkeypatch.setattr(accounts.signup, "promote_if_first", slow_promote)
    results = {}

    def run(name):
        try:
            results[name] = signup(Client(), name).status_code
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(name,)) for name in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {"first": 302, "second": 302}
    users = get_user_model().objects.all()
    assert users.count() == 2
    assert users.filter(is_superuser=True).count() == 1
    assert users.filter(is_staff=True).count() == 1


@pytest.mark.django_db
def test_bootstrap_createsuperuser_keeps_signup_closed_until_an_admin_exists(client, settings):
    settings.SMOLSITE_ADMIN_BOOTSTRAP = "createsuperuser"
    response = signup(client, "eve")
    assert response.status_code == 403 and "createsuperuser" in response.content.decode()
    assert not get_user_model().objects.exists()
    assert "Create an account" not in client.get(reverse("login")).content.decode()
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    assert signup(client, "eve").status_code == 302
    eve = get_user_model().objects.get(username="eve")
    assert not eve.is_superuser and not eve.is_staff


# ---- 8. production settings ---------------------------------------------------------------

def manage_check(tmp_path, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("SMOLSITE_", "DJANGO_"))}
    environment.update({"DEBUG": "0", "SECRET_KEY": "k" * 20 + "Zq8!xW2#pL5$vN7^rT1&yU4*iO6(aS3)dF9",
                        "ALLOWED_HOSTS": "chat.example.org", "SMOLSITE_VAR_DIR": str(tmp_path),
                        "SMOLSITE_EMBEDDED_WORKER": "0"})
    environment.update(env)
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=120)


def test_check_deploy_passes_for_a_production_configuration(tmp_path):
    result = manage_check(tmp_path, SMOLSITE_HTTPS="1", SMOLSITE_ADMIN_BOOTSTRAP="createsuperuser")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_deploy_warns_without_https_and_about_the_first_signup(tmp_path):
    result = manage_check(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for check in ("security.W004", "security.W008", "security.W012", "security.W016", "smolsite.W001"):
        assert check in output, output


def test_an_unknown_admin_bootstrap_mode_is_a_system_check_error(settings):
    """The site's own checks are registered for every command, not only `check --deploy`."""
    from django.core import checks

    settings.SMOLSITE_ADMIN_BOOTSTRAP = "bogus"
    assert "smolsite.E001" in [message.id for message in checks.run_checks(tags=[checks.Tags.security])]


def test_https_settings(tmp_path):
    code = ("from django.conf import settings as s; print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, "
            "s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS > 0, s.SECURE_PROXY_SSL_HEADER)")
    environment = {**os.environ, "SMOLSITE_HTTPS": "1", "SMOLSITE_VAR_DIR": str(tmp_path),
                   "DJANGO_SETTINGS_MODULE": "smolsite.settings"}
    out = subprocess.run([sys.executable, "-c", "import django; django.setup(); " + code], cwd=REPO,
                         env=environment, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True", "True", "True", "('HTTP_X_FORWARDED_PROTO',", "'https')"], out.stderr
    # Plain HTTP redirects, except the probes; what the proxy says is HTTPS gets HSTS.
    code = ("from django.test import Client; c = Client(); "
            "r = c.get('/accounts/login/'); print(r.status_code, r.headers.get('Location')); "
            "print(c.get('/healthz').status_code); "
            "r = c.get('/healthz', HTTP_X_FORWARDED_PROTO='https'); print(r.headers.get('Strict-Transport-Security'))")
    out = subprocess.run([sys.executable, "-c", "import django; django.setup(); " + code], cwd=REPO,
                         env=environment, capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines() == ["301 https://testserver/accounts/login/", "200",
                                       "max-age=31536000; includeSubDomains"], out.stderr


@pytest.mark.django_db
def test_pages_carry_a_content_security_policy_and_htmx_cannot_eval(client, alice):
    response = client.get(reverse("chat:index"), follow=True)
    policy = response.headers["Content-Security-Policy"]
    directives = {d.split()[0]: d.split()[1:] for d in policy.split("; ")}
    assert directives["default-src"] == ["'self'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["connect-src"] == ["'self'"]
    assert directives["object-src"] == ["'none'"] and directives["frame-ancestors"] == ["'none'"]
    assert "unsafe-eval" not in policy and "'unsafe-inline'" not in " ".join(directives["script-src"])
    page = response.content.decode()
    assert '"allowEval":false' in page
    assert not re.search(r"<script(?![^>]*\bsrc=)", page), "inline script would be blocked by the policy"


@pytest.mark.asyncio
async def test_asgi_app_serves_static_files_without_collectstatic():
    from smolsite.asgi import application

    # chat/main.js is loaded as a module, which imports the others: a JavaScript type, or no script.
    for path, kind in [("/static/chat/main.js", "javascript"), ("/static/chat/stream.js", "javascript"),
                       ("/static/vendor/htmx.min.js", "javascript"), ("/static/admin/css/base.css", "css")]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start, body = await asgi_get(application, path)
        assert not [w for w in caught if "synchronous iterators" in str(w.message)]
        assert start["status"] == 200, path
        headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        assert kind in headers["content-type"]
        if path.startswith("/static/admin"):
            assert len(body) > 100
        else:
            assert body == (REPO / "static" / path.removeprefix("/static/")).read_bytes()


async def asgi_get(application, path):
    comm = HttpCommunicator(application, "GET", path)
    await comm.send_input({"type": "http.request", "body": b""})
    start = await comm.receive_output(20)
    assert start["type"] == "http.response.start"
    body = b""
    while True:
        chunk = await comm.receive_output(20)
        body += chunk.get("body", b"")
        if not chunk.get("more_body"):
            return start, body


def test_secret_key_file_is_private_and_the_same_for_racing_processes(tmp_path):
    from smolsite.settings import secret_key_from_file

    key_file = tmp_path / "var" / "secret_key"
    keys, start = [], threading.Barrier(8)

    def read():
        start.wait()
        keys.append(secret_key_from_file(key_file))

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys[0]) >= 50
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [p.name for p in key_file.parent.iterdir()] == ["secret_key"]  # no temporary files left
    # A key an older version wrote world-readable is made private.
    key_file.chmod(0o644)
    assert secret_key_from_file(key_file) == keys[0]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


# ---- 2 and 5. websockets ------------------------------------------------------------------

@database_sync_to_async
def signed_in(username="alice", model="smollm2-135m"):
    """A user with a real session (as a browser has) and a chat of theirs."""
    user = make_user(username)
    client = Client()
    client.force_login(user)
    conv = make_conversation(user, "mine", model=model)
    return user, conv, client.cookies["sessionid"].value


async def open_socket(conv_id, session_key=None, user=None):
    from smolsite.asgi import application

    headers = [(b"origin", b"http://127.0.0.1")]
    if session_key:
        headers.append((b"cookie", f"sessionid={session_key}".encode()))
    comm = WebsocketCommunicator(application, f"/ws/chat/{conv_id}/", headers=headers)
    if user is not None:
        comm.scope["user"] = user
    connected, _ = await comm.connect()
    assert connected, "refusals are sent after accept, so browsers see their code"
    return comm


async def until_close(comm, timeout=10):
    """Frames until the server closes the socket: (frames, close code)."""
    frames = []
    async with asyncio.timeout(timeout):
        while True:
            output = await comm.receive_output(timeout)
            if output["type"] == "websocket.close":
                return frames, output.get("code")
            frames.append(json.loads(output["text"]))


async def assert_still_open(comm):
    await comm.send_json_to({"action": "stop"})
    frame = json.loads(await comm.receive_from(timeout=10))
    assert frame["type"] == "error" and "Nothing is being generated" in frame["error"]


ws = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_refusals_are_accepted_then_closed_with_a_code():
    _, conv, key = await signed_in()
    _, _, bob_key = await signed_in("bob")
    comm = await open_socket(conv.pk)  # no session: signed out
    assert (await until_close(comm))[1] == 4401
    comm = await open_socket(conv.pk, bob_key)  # not bob's
    assert (await until_close(comm))[1] == 4403
    comm = await open_socket(conv.pk + 1000, key)  # no such chat: the same answer
    assert (await until_close(comm))[1] == 4403
    comm = await open_socket(10 ** 30, key)  # beyond any database integer
    assert (await until_close(comm))[1] == 4403
    comm = await open_socket(conv.pk, key)
    await assert_still_open(comm)
    await comm.disconnect()


@database_sync_to_async
def log_out(session_key):
    Session.objects.filter(session_key=session_key).delete()


@database_sync_to_async
def change_password(user):
    user.set_password("another-password-42")
    user.save()


@database_sync_to_async
def deactivate(user):
    get_user_model().objects.filter(pk=user.pk).update(is_active=False)


@database_sync_to_async
def message_count(conv):
    return Message.objects.filter(conversation_id=conv.pk).count()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("how", [log_out, change_password, deactivate])
async def test_a_signed_out_socket_cannot_send(settings, how):
    settings.SMOLSITE_WS_AUTH_SECONDS = 60  # the frame itself must be checked
    user, conv, key = await signed_in()
    comm = await open_socket(conv.pk, key)
    await assert_still_open(comm)
    await how(key if how is log_out else user)
    await comm.send_json_to({"action": "send", "content": "still here?"})
    frames, code = await until_close(comm)
    assert code == 4401
    assert [f["type"] for f in frames] == ["error"] and "signed out" in frames[0]["error"]
    assert await message_count(conv) == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("how", [log_out, change_password, deactivate])
async def test_an_idle_signed_out_socket_is_closed_within_seconds(settings, how):
    settings.SMOLSITE_WS_AUTH_SECONDS = 0.2
    user, conv, key = await signed_in()
    comm = await open_socket(conv.pk, key)
    await how(key if how is log_out else user)
    frames, code = await until_close(comm, timeout=5)
    assert code == 4401


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_signed_out_socket_gets_no_new_events(settings):
    from chat import socket_auth

    settings.SMOLSITE_WS_AUTH_SECONDS = 60  # forwarding itself must check
    user, conv, key = await signed_in()
    comm = await open_socket(conv.pk, key)
    await log_out(key)
    await asyncio.sleep(socket_auth.EVENT_AUTH_SECONDS + 0.1)
    await get_channel_layer().group_send(conv.group_name, {
        "type": "gen.events", "message": 1, "events": [{"seq": 1, "kind": "text", "text": "secret"}]})
    frames, code = await until_close(comm)
    assert code == 4401
    assert not [f for f in frames if f["type"] in ("events", "snapshot", "thread", "final")]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_user_put_in_the_scope_is_rechecked_too(settings):
    """Sockets whose user did not come from a session (as in the consumer tests) are re-checked by
    the user's row."""
    settings.SMOLSITE_WS_AUTH_SECONDS = 60
    user, conv, _ = await signed_in()
    comm = await open_socket(conv.pk, user=user)
    await assert_still_open(comm)
    await change_password(user)
    await comm.send_json_to({"action": "stop"})
    assert (await until_close(comm))[1] == 4401


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_sending_in_a_deleted_chat_gets_an_error_and_4404(settings):
    settings.SMOLSITE_WS_AUTH_SECONDS = 60
    _, conv, key = await signed_in()
    comm = await open_socket(conv.pk, key)
    await database_sync_to_async(Conversation.objects.filter(pk=conv.pk).delete)()
    await comm.send_json_to({"action": "send", "content": "hello?"})
    frames, code = await until_close(comm)
    assert code == 4404
    assert frames[0]["type"] == "error" and "deleted" in frames[0]["error"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("payload, expected", [
    ("[" * 60000, "not valid JSON"),
    ("{" * 30000, "not valid JSON"),
    (json.dumps({"action": "send", "content": "a\u0000b"}), "NUL"),
    (json.dumps({"action": "edit", "message": 1, "content": "\u0000"}), "NUL"),
    (json.dumps({"action": "send", "content": "x", "nested": [[[[["\u0000"]]]]]}), "NUL"),
    (json.dumps({"action": "resume", "message": "²"}), "Malformed"),
    (json.dumps({"action": "resume", "message": "9" * 5000}), "Malformed"),
    (json.dumps({"action": "send", "content": [[[[]]]] * 10 + ["x"]}), "must be text"),
    ('{"action": "send", "content": ' + "[" * 100 + "]" * 100 + "}", "must be text"),
])
async def test_frames_that_crashed_get_an_error_frame(settings, payload, expected):
    user, conv, key = await signed_in()
    comm = await open_socket(conv.pk, key)
    await comm.send_to(text_data=payload)
    frame = json.loads(await comm.receive_from(timeout=10))
    assert frame["type"] == "error" and expected in frame["error"], frame
    assert await message_count(conv) == 0
    await assert_still_open(comm)
    await comm.disconnect()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
frames = st.one_of(
    st.text(min_size=1, max_size=200),
    st.fixed_dictionaries({"action": st.sampled_from(["send", "edit", "regenerate", "stop", "resume", "x"])},
                          optional={"content": json_values, "message": json_values}).map(json.dumps),
)


@pytest.mark.django_db(transaction=True)
def test_fuzz_frames_always_answer_with_one_error_and_keep_the_socket():
    """The chat's model is gone, so no frame can start a generation: every frame is answered
    with exactly one error frame, writes nothing and leaves the socket open."""
    loop = asyncio.new_event_loop()
    try:
        _, conv, key = loop.run_until_complete(signed_in(model="no-longer-configured"))
        comm = loop.run_until_complete(open_socket(conv.pk, key))

        async def exchange(text):
            await comm.send_to(text_data=text)
            output = await comm.receive_output(10)
            assert output["type"] == "websocket.send", output
            assert json.loads(output["text"])["type"] == "error"
            assert await comm.receive_nothing(timeout=0.05)

        @hsettings(max_examples=80, deadline=None)
        @given(frame=frames)
        def check(frame):
            loop.run_until_complete(exchange(frame))

        check()
        assert loop.run_until_complete(message_count(conv)) == 0
        loop.run_until_complete(comm.disconnect())
    finally:
        loop.close()


@pytest.mark.django_db
def test_a_nul_in_the_path_is_a_400_and_dropped_from_the_query(client):
    """PostgreSQL text cannot hold NUL: a lookup by such an id or filter used to be a 500 there."""
    from batches.models import Batch
    from smolsite.nul_guard import refusal
    from django.test import RequestFactory

    alice = get_user_model().objects.create_user("alice", password="correct-horse-battery-9")
    client.force_login(alice)
    for url in ("/batches/%00/input/", "/batches/batch_%00/cancel/", "/c/%00/thread/"):
        response = client.post(url) if url.endswith("cancel/") else client.get(url)
        assert response.status_code == 400, url
        assert "NUL character" in response.content.decode()
    # The API answers in OpenAI's shape, before it even looks at the key.
    for url in ("/v1/files/file-%00", "/v1/batches/%00/cancel"):
        response = Client().get(url)
        assert response.status_code == 400, url
        assert response.json()["error"]["code"] == "invalid_characters"
    assert Batch.objects.count() == 0
    # In the query string a NUL is dropped and the rest kept, so filters never reach the database with one.
    request = RequestFactory().get("/v1/files?purpose=bat%00ch&after=%00&%00q=a%00b&x=1")
    assert refusal(request) is None
    assert request.GET.dict() == {"purpose": "batch", "after": "", "q": "ab", "x": "1"}
    assert client.get("/batches/?x=%00").status_code == 200
    # Everything else goes through as before.
    assert client.get("/batches/").status_code == 200
    assert client.get("/batches/batch_0123/input/").status_code == 404
    assert Client().get("/v1/files").status_code == 401
