"""The cross-user matrix (issue 12): user B can neither read, stream, stop, rename, delete, export
nor download anything of user A's, through any page, API endpoint or websocket action that takes an
id, and a user who is not staff reaches no admin page.

The tables below are checked against the URLconf (django.urls.get_resolver) and the consumer's
actions: a new route or action that takes an id and is not in a table fails
test_every_id_route_is_in_the_matrix, so nobody can add one without saying how it is protected.
Every probe is also made by A, who must succeed: a route that refused everyone would not pass.
Runs on SQLite and, with DATABASE_URL, on PostgreSQL."""
import json
import re

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.forms.models import model_to_dict
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from api.models import ApiKey
from batches.models import Batch, BatchFile, BatchLine
from chat.consumers import ChatConsumer
from chat.models import Conversation, Message, ToolCall
from chat.routing import websocket_urlpatterns

PASSWORD = "correct-horse-battery-9"
HX = {"HTTP_HX_REQUEST": "true"}
SECRET = "the-secret-of-alice"


# ---- the URLconf ---------------------------------------------------------------------------

def _walk(patterns, prefix="", namespace=None):
    for p in patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, route, p.namespace or namespace)
        elif isinstance(p, URLPattern):
            pattern = p.pattern
            keys = list(pattern.converters) if hasattr(pattern, "_route") else list(pattern.regex.groupindex)
            yield route, namespace, keys


def routes():
    """(route, namespace, the names of the values it takes) for every URL the site answers."""
    return list(_walk(get_resolver().url_patterns))


# ---- the objects -----------------------------------------------------------------------------

class World:
    """Alice with one of everything, Bob signed in with a session and an API key of his own."""

    def __init__(self):
        users = get_user_model().objects
        self.alice = users.create_user("alice", password=PASSWORD)
        self.bob = users.create_user("bob", password=PASSWORD)
        self.conv = Conversation.objects.create(owner=self.alice, title=SECRET, model="smollm2-135m",
                                                system_prompt=SECRET)
        self.question = Message.objects.create(conversation=self.conv, role="user", content=SECRET + " question")
        self.answer = Message.objects.create(conversation=self.conv, parent=self.question, role="assistant",
                                             content=SECRET + " answer", status="done", model_name="smollm2-135m")
        self.other_answer = Message.objects.create(conversation=self.conv, parent=self.question, role="assistant",
                                                   content=SECRET + " other branch", status="done",
                                                   model_name="smollm2-135m")
        # A tool call of Alice's (the approve and deny probes make it wait for her decision).
        self.call = ToolCall.objects.create(message=self.answer, index=0, call_id="call_secret", name="calculator",
                                            arguments=f'{{"expression": "{SECRET}"}}', output=SECRET, status="ok")
        # A stored background response of Alice's (POST /v1/responses): an answer whose options
        # hold the request's fields (api.response_store).
        self.response = Message.objects.create(
            conversation=self.conv, parent=self.question, role="assistant", content=SECRET + " response",
            status="done", model_name="smollm2-135m", options={"response": {
                "background": True, "store": True, "metadata": {"note": SECRET},
                "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": SECRET}]}]}})
        self.conv.current_leaf = self.answer
        self.conv.save(update_fields=["current_leaf"])
        self.key, self.alice_raw_key = ApiKey.create_for(self.alice, SECRET)
        line = json.dumps({"custom_id": SECRET, "method": "POST", "url": "/v1/chat/completions",
                           "body": {"model": "smollm2-135m", "messages": [{"role": "user", "content": SECRET}]}})
        self.file = BatchFile.objects.create(owner=self.alice, filename="alice.jsonl", data=line.encode(),
                                             bytes=len(line))
        self.spare_file = BatchFile.objects.create(owner=self.alice, filename="spare.jsonl", data=line.encode(),
                                                   bytes=len(line))
        output = BatchFile.objects.create(owner=self.alice, filename="out.jsonl", data=SECRET.encode(), bytes=1)
        errors = BatchFile.objects.create(owner=self.alice, filename="err.jsonl", data=SECRET.encode(), bytes=1)
        self.batch = Batch.objects.create(owner=self.alice, api_key=self.key, status=Batch.Status.IN_PROGRESS,
                                          input_file=self.file, output_file=output, error_file=errors,
                                          errors=[{"message": SECRET}], total=1)
        BatchLine.objects.create(batch=self.batch, index=0, custom_id=SECRET, body={})
        _, self.bob_raw_key = ApiKey.create_for(self.bob, "bob's")
        self.bob_client = Client()
        self.bob_client.force_login(self.bob)
        self.alice_client = Client()
        self.alice_client.force_login(self.alice)

    def client(self, who, auth):
        raw = self.alice_raw_key if who == "alice" else self.bob_raw_key
        if auth == "bearer":
            return Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return self.alice_client if who == "alice" else self.bob_client

    def snapshot(self):
        """Every row of Alice's, field by field: a refused request must leave it all as it was."""
        rows = []
        for model, owner in [(Conversation, "owner"), (Message, "conversation__owner"),
                             (ToolCall, "message__conversation__owner"), (ApiKey, "user"),
                             (BatchFile, "owner"), (Batch, "owner"), (BatchLine, "batch__owner")]:
            for obj in model.objects.filter(**{owner: self.alice}).order_by("pk"):
                fields = model_to_dict(obj)
                fields.pop("last_used_at", None)  # Alice's own probes use her key
                rows.append((model.__name__, obj.pk, repr(sorted(fields.items(), key=lambda kv: kv[0]))))
        return rows


@pytest.fixture
def world(db):
    return World()


# ---- the matrix: every route that takes a value -----------------------------------------------
# Each probe: (method, url from the world, form data, "session" or "bearer", Alice's statuses).
# Bob must get a 404 (as if the object did not exist), no secret in the answer, and no change.

def P(method, url, data=None, auth="session", ok=(200,), htmx=False):
    return {"method": method, "url": url, "data": data, "auth": auth, "ok": ok, "htmx": htmx}


MATRIX = {
    "c/<int:pk>/": [P("get", lambda w: f"/c/{w.conv.pk}/")],
    "c/<int:pk>/thread/": [P("get", lambda w: f"/c/{w.conv.pk}/thread/")],
    "c/<int:pk>/item/": [P("get", lambda w: f"/c/{w.conv.pk}/item/")],
    "c/<int:pk>/rename/": [P("get", lambda w: f"/c/{w.conv.pk}/rename/"),
                           P("post", lambda w: f"/c/{w.conv.pk}/rename/", {"title": "bob was here"}, ok=(302,))],
    "c/<int:pk>/keep/": [P("post", lambda w: f"/c/{w.conv.pk}/keep/", {"kept": "1"}, ok=(302,))],
    "c/<int:pk>/delete/": [P("post", lambda w: f"/c/{w.conv.pk}/delete/", ok=(302,))],
    "c/<int:pk>/settings/": [P("post", lambda w: f"/c/{w.conv.pk}/settings/",
                               {"system_prompt": "bob", "temperature": "1", "top_p": "0.5", "max_tokens": "5"},
                               ok=(302,))],
    "c/<int:pk>/model/": [P("post", lambda w: f"/c/{w.conv.pk}/model/", {"model": "smollm2-135m"}, ok=(302,))],
    "c/<int:pk>/branch/": [P("post", lambda w: f"/c/{w.conv.pk}/branch/", lambda w: {"message": w.other_answer.pk},
                             ok=(302,))],
    "account/keys/<int:pk>/revoke/": [P("post", lambda w: f"/account/keys/{w.key.pk}/revoke/", ok=(302,))],
    "batches/<str:batch_id>/cancel/": [P("post", lambda w: f"/batches/{w.batch.pk}/cancel/", ok=(302,))],
    "batches/<str:batch_id>/problems/": [P("get", lambda w: f"/batches/{w.batch.pk}/problems/")],
    "batches/<str:batch_id>/<str:which>/": [P("get", lambda w, which=which: f"/batches/{w.batch.pk}/{which}/")
                                            for which in ("input", "output", "errors")],
    "^v1/files/(?P<file_id>[^/]+)/content/?$": [P("get", lambda w: f"/v1/files/{w.file.pk}/content",
                                                  auth="bearer")],
    "^v1/files/(?P<file_id>[^/]+)/?$": [P("get", lambda w: f"/v1/files/{w.file.pk}", auth="bearer"),
                                        P("delete", lambda w: f"/v1/files/{w.spare_file.pk}", auth="bearer")],
    "^v1/batches/(?P<batch_id>[^/]+)/cancel/?$": [P("post", lambda w: f"/v1/batches/{w.batch.pk}/cancel",
                                                    auth="bearer")],
    "^v1/batches/(?P<batch_id>[^/]+)/?$": [P("get", lambda w: f"/v1/batches/{w.batch.pk}", auth="bearer")],
    "^v1/responses/(?P<rid>[^/]+)/?$": [P("get", lambda w: f"/v1/responses/resp_{w.response.pk}", auth="bearer"),
                                        P("delete", lambda w: f"/v1/responses/resp_{w.response.pk}", auth="bearer")],
    "^v1/responses/(?P<rid>[^/]+)/input_items/?$": [
        P("get", lambda w: f"/v1/responses/resp_{w.response.pk}/input_items", auth="bearer")],
    "^v1/responses/(?P<rid>[^/]+)/cancel/?$": [P("post", lambda w: f"/v1/responses/resp_{w.response.pk}/cancel",
                                                 auth="bearer")],
}

# Routes that take a value naming nothing a user owns.
NOT_OWNED = {
    "^v1/models/(?P<name>.+)$": "a configured model's name: the same for every user",
    "^v1(?:/(?P<rest>.*))?$": "the API's catch-all: a JSON 404 for any unknown path",
}


def id_routes():
    return {route for route, namespace, keys in routes() if keys and namespace != "admin"}


def test_every_id_route_is_in_the_matrix():
    missing = id_routes() - set(MATRIX) - set(NOT_OWNED)
    assert not missing, ("routes that take an id but are not in tests/test_cross_user.py's MATRIX (add a probe "
                         f"saying how another user is refused): {sorted(missing)}")
    stale = (set(MATRIX) | set(NOT_OWNED)) - id_routes()
    assert not stale, f"MATRIX lists routes the site no longer has: {sorted(stale)}"


CASES = [(route, i) for route, probes in MATRIX.items() for i in range(len(probes))]


def _request(world, who, probe):
    client = world.client(who, probe["auth"])
    data = probe["data"](world) if callable(probe["data"]) else probe["data"]
    extra = HX if probe["htmx"] else {}
    if probe["method"] == "get":
        return client.get(probe["url"](world), **extra)
    if probe["method"] == "delete":
        return client.delete(probe["url"](world), **extra)
    return client.post(probe["url"](world), data or {}, **extra)


@pytest.mark.parametrize("route, index", CASES, ids=[f"{r}#{i}" for r, i in CASES])
def test_another_user_is_refused_and_the_owner_is_not(world, route, index):
    probe = MATRIX[route][index]
    before = world.snapshot()
    response = _request(world, "bob", probe)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert response.status_code == 404, (route, response.status_code, body[:300])
    assert SECRET.encode() not in body
    assert world.snapshot() == before, f"Bob's refused {probe['method'].upper()} {route} changed Alice's rows"
    # The control: the same request is Alice's to make.
    response = _request(world, "alice", probe)
    assert response.status_code in probe["ok"], (route, response.status_code, response.content[:300])


# ---- ids carried in query strings and bodies ---------------------------------------------------

def test_sidebar_current_id_of_another_user_shows_nothing_of_theirs(world):
    response = world.bob_client.get("/conversations/", {"current": world.conv.pk}, **HX)
    assert response.status_code == 200 and SECRET.encode() not in response.content
    response = world.bob_client.get("/conversations/", {"current": world.conv.pk})
    assert response.status_code == 302 and str(world.conv.pk) not in response["Location"]


def test_branch_to_another_users_message_in_your_own_chat_is_404(world):
    mine = Conversation.objects.create(owner=world.bob, model="smollm2-135m")
    before = world.snapshot()
    response = world.bob_client.post(f"/c/{mine.pk}/branch/", {"message": world.other_answer.pk}, **HX)
    assert response.status_code == 404
    mine.refresh_from_db()
    assert mine.current_leaf_id is None and world.snapshot() == before


def test_api_lists_and_pagination_show_nothing_of_another_user(world):
    bob = world.client("bob", "bearer")
    for path in ("/v1/files", "/v1/batches"):
        response = bob.get(path)
        assert response.status_code == 200 and response.json()["data"] == []
        response = bob.get(path, {"after": world.file.pk if "files" in path else world.batch.pk})
        assert response.status_code == 400 and SECRET not in response.content.decode()
    # And Alice's own listing is not empty (the control).
    assert world.client("alice", "bearer").get("/v1/files").json()["data"]


def test_api_batch_from_another_users_file_is_404_and_creates_nothing(world):
    before, batches = world.snapshot(), Batch.objects.count()
    response = world.client("bob", "bearer").post(
        "/v1/batches", {"input_file_id": world.file.pk, "endpoint": "/v1/chat/completions",
                        "completion_window": "24h"}, content_type="application/json")
    assert response.status_code == 404 and response.json()["error"]["code"] == "file_not_found"
    assert Batch.objects.count() == batches and world.snapshot() == before


def test_a_response_chained_to_another_users_response_is_404_and_creates_nothing(world):
    before, messages = world.snapshot(), Message.objects.count()
    response = world.client("bob", "bearer").post(
        "/v1/responses", {"model": "smollm2-135m", "input": "hi", "previous_response_id": f"resp_{world.response.pk}"},
        content_type="application/json")
    assert response.status_code == 404 and response.json()["error"]["code"] == "previous_response_not_found"
    assert SECRET not in response.content.decode()
    assert Message.objects.count() == messages and world.snapshot() == before


def test_an_api_key_is_never_a_session_and_a_session_is_never_a_key(world):
    """The API reads only Authorization: Bob's signed-in browser cannot use the API as Bob, let
    alone as Alice, and Alice's key (as a cookie) signs nobody in to the pages."""
    assert world.bob_client.get(f"/v1/files/{world.file.pk}").status_code == 401
    anonymous = Client()
    anonymous.cookies["sessionid"] = world.alice_raw_key
    response = anonymous.get(f"/c/{world.conv.pk}/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


# ---- websockets ------------------------------------------------------------------------------

WS_ROUTES = {"ws/chat/<int:conversation_id>/": "B's socket to A's chat is accepted, then closed 4403"}

# Every action of the chat consumer (its do_<action> methods) and what an id of A's does on B's
# own socket. "send" takes no id: it writes only to the socket's own (checked) chat.
WS_ACTIONS = {
    "send": None,
    "resume": lambda w: {"action": "resume", "message": w.answer.pk},
    "regenerate": lambda w: {"action": "regenerate", "message": w.answer.pk},
    "edit": lambda w: {"action": "edit", "message": w.question.pk, "content": "bob was here"},
    "stop": lambda w: {"action": "stop"},
    "approve": lambda w: {"action": "approve", "call": w.call.pk},
    "deny": lambda w: {"action": "deny", "call": w.call.pk},
}


def test_every_websocket_route_and_action_is_in_the_matrix():
    routes_here = {str(p.pattern) for p in websocket_urlpatterns}
    assert routes_here == set(WS_ROUTES), routes_here
    actions = {name[3:] for name in dir(ChatConsumer) if name.startswith("do_")}
    assert actions == set(WS_ACTIONS), f"add the consumer's new actions to WS_ACTIONS: {actions ^ set(WS_ACTIONS)}"


async def _socket(conversation_id, user):
    from smolsite.asgi import application

    comm = WebsocketCommunicator(application, f"/ws/chat/{conversation_id}/", headers=[(b"origin", b"http://127.0.0.1")])
    comm.scope["user"] = user
    connected, _ = await comm.connect()
    assert connected
    return comm


async def _frames_until_quiet(comm):
    frames = []
    while not await comm.receive_nothing(timeout=0.3):
        output = await comm.receive_output(5)
        if output["type"] == "websocket.close":
            frames.append({"type": "close", "code": output.get("code")})
            break
        frames.append(json.loads(output["text"]))
    return frames


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_another_users_chat_socket_is_closed_4403_and_streams_nothing():
    world = await database_sync_to_async(World)()
    # A generation of Alice's in progress: Bob's socket must not get its snapshot.
    await database_sync_to_async(Message.objects.filter(pk=world.answer.pk).update)(status="streaming")
    comm = await _socket(world.conv.pk, world.bob)
    frames = await _frames_until_quiet(comm)
    assert frames == [{"type": "close", "code": 4403}], frames
    # The control: Alice's socket gets the snapshot of her streaming answer.
    comm = await _socket(world.conv.pk, world.alice)
    frames = await _frames_until_quiet(comm)
    assert frames[0]["type"] == "snapshot" and SECRET in frames[0]["content"]
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("action", [a for a, frame in WS_ACTIONS.items() if frame is not None])
async def test_another_users_message_ids_on_your_own_socket(action, settings):
    settings.SMOLSITE_WS_AUTH_SECONDS = 60
    world = await database_sync_to_async(World)()
    mine = await database_sync_to_async(Conversation.objects.create)(owner=world.bob, model="smollm2-135m")
    if action == "stop":
        # Alice's answer is streaming; Bob's stop on his own idle chat must not reach it.
        await database_sync_to_async(Message.objects.filter(pk=world.answer.pk).update)(status="streaming")
    if action in ("approve", "deny"):
        await database_sync_to_async(ToolCall.objects.filter(pk=world.call.pk).update)(status="awaiting")
    before = await database_sync_to_async(world.snapshot)()
    comm = await _socket(mine.pk, world.bob)
    await comm.send_json_to(WS_ACTIONS[action](world))
    frames = await _frames_until_quiet(comm)
    assert [f["type"] for f in frames] == ["error"], frames
    assert SECRET not in json.dumps(frames)
    assert await database_sync_to_async(world.snapshot)() == before
    assert await database_sync_to_async(Message.objects.filter(conversation=mine).count)() == 0
    await comm.disconnect()
    if action == "stop":
        from inference import stop

        assert not stop.is_stop_requested(str(world.answer.pk))


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("action", ["approve", "deny"])
async def test_another_users_tool_call_on_their_socket_is_decided_by_them_only(action):
    """The control for approve and deny: Alice, on her own chat's socket, decides her call (so the
    refusal above is about whose call it is); Bob's socket to her chat is closed before any frame."""
    world = await database_sync_to_async(World)()
    await database_sync_to_async(ToolCall.objects.filter(pk=world.call.pk).update)(status="awaiting")
    comm = await _socket(world.conv.pk, world.bob)
    assert await _frames_until_quiet(comm) == [{"type": "close", "code": 4403}]
    comm = await _socket(world.conv.pk, world.alice)
    await comm.send_json_to(WS_ACTIONS[action](world))
    frames = await _frames_until_quiet(comm)
    assert "error" not in [f["type"] for f in frames], frames
    call = await database_sync_to_async(ToolCall.objects.get)(pk=world.call.pk)
    # (Her answer is no chat tool loop's, so an approved call is left queued, not run.)
    assert call.status == ("pending" if action == "approve" else "denied")
    await comm.disconnect()


# ---- the admin -------------------------------------------------------------------------------

ADMIN_OPEN = {"admin/login/", "admin/logout/"}  # the login form itself; logging out ends one's own session


def _admin_urls(world):
    app_labels = None
    for route, namespace, keys in routes():
        if namespace != "admin" or route in ADMIN_OPEN:
            continue
        if "(?P<app_label>" in route:
            app_labels = re.search(r"\(\?P<app_label>([^)]*)\)", route).group(1).split("|")
            for label in app_labels:
                yield f"/admin/{label}/"
            continue
        if "(?P<url>" in route:
            yield "/admin/no-such-page/"
            continue
        values = {"object_id": world.conv.pk, "id": world.alice.pk, "content_type_id": 1}
        yield "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values.get(m.group(1), 1)), route)


def test_a_user_who_is_not_staff_reaches_no_admin_page(world):
    urls = list(_admin_urls(world))
    assert len(urls) > 20  # every model's pages, not a handful
    before = world.snapshot()
    for url in urls:
        for method in ("get", "post"):
            response = getattr(world.bob_client, method)(url, {"title": "bob", "post": "yes"})
            # Django's admin sends everyone who is not active staff to its login page.
            assert response.status_code in (302, 404), (method, url, response.status_code)
            if response.status_code == 302:
                assert response["Location"].startswith("/admin/login/"), (url, response["Location"])
            assert SECRET.encode() not in response.content
    assert world.snapshot() == before
    assert get_user_model().objects.get(pk=world.bob.pk).is_staff is False
