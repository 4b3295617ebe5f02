"""The order of the request guards in settings.MIDDLEWARE (issue 16 §5): a NUL character is dealt
with before anything reads the database (PostgreSQL text cannot hold one: a 500 otherwise), and a
database that cannot be reached gives the clear 503 page, on the site's pages and its sign-in
alike, without a failed sign-in being counted against anyone."""
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from browser_support import free_port

PASSWORD = "right-horse-battery-7"
NUL_SESSION_COOKIE = 'sessionid="\\000abcdefghijklmnopqrstuvwxyz"'  # a quoted cookie's octal escape: a NUL


def test_the_nul_guard_comes_before_the_session_middleware():
    order = settings.MIDDLEWARE
    assert order.index("smolsite.nul_guard.NulCharacterMiddleware") < \
        order.index("django.contrib.sessions.middleware.SessionMiddleware")


@pytest.mark.django_db
def test_a_nul_in_the_session_cookie_never_reaches_the_database():
    with CaptureQueriesContext(connection) as queries:
        page = Client().get("/", HTTP_COOKIE=NUL_SESSION_COOKIE)  # on PostgreSQL: a DataError, a 500
        login = Client().get("/accounts/login/", HTTP_COOKIE=NUL_SESSION_COOKIE)
    assert page.status_code == 302 and page["Location"].startswith("/accounts/login/")  # as if no cookie
    assert login.status_code == 200
    assert not [q["sql"] for q in queries.captured_queries if "django_session" in q["sql"]]  # no key to look up


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_nul_in_a_websockets_session_cookie_is_as_no_session():
    from channels.testing import WebsocketCommunicator

    from smolsite.asgi import application

    comm = WebsocketCommunicator(application, "/ws/chat/1/", headers=[
        (b"origin", b"http://127.0.0.1"), (b"cookie", NUL_SESSION_COOKIE.encode())])
    connected, _ = await comm.connect(timeout=10)  # on PostgreSQL: a DataError in the session lookup
    assert connected  # then closed: signed out
    assert await comm.receive_output(timeout=10) == {"type": "websocket.close", "code": 4401}


@pytest.mark.django_db
def test_a_nul_path_is_refused_before_the_session_is_read(django_assert_num_queries):
    user = get_user_model().objects.create_user("ann", password=PASSWORD)
    client = Client()
    client.force_login(user)
    with django_assert_num_queries(0):
        response = client.get("/c/%00/")
    assert response.status_code == 400 and b"NUL character" in response.content


class Outage:
    """The database unreachable, as when it restarts: SQLite's file cannot be opened, PostgreSQL's
    port has nobody listening."""

    def __init__(self):
        self.saved = dict(connection.settings_dict)

    def start(self):
        connection.close()
        if connection.vendor == "sqlite":
            connection.settings_dict["NAME"] = "/nonexistent-smolsite-dir/db.sqlite3"
        else:
            connection.settings_dict["HOST"], connection.settings_dict["PORT"] = "127.0.0.1", str(free_port())

    def end(self):
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(self.saved)


@pytest.fixture
def outage(transactional_db):
    outage = Outage()
    yield outage
    outage.end()


def unavailable(response):
    return response.status_code == 503 and b"The database is unavailable right now" in response.content


def test_an_unreachable_database_gives_the_clear_503_and_failed_sign_ins_are_not_counted(outage, settings):
    settings.SMOLSITE_LOGIN_FAILURES_PER_ACCOUNT = 2  # one failure from one address locks it
    get_user_model().objects.create_user("ann", password=PASSWORD, is_staff=True)
    signed_in = Client()
    signed_in.force_login(get_user_model().objects.get(username="ann"))
    outage.start()
    assert unavailable(signed_in.get("/"))
    for _ in range(3):
        assert unavailable(Client().post("/accounts/login/", {"username": "ann", "password": PASSWORD}))
        assert unavailable(Client().post("/admin/login/", {"username": "ann", "password": PASSWORD}))
    outage.end()
    # The sign-ins the outage refused were nobody's failed guesses: ann is not locked out.
    response = Client().post("/accounts/login/", {"username": "ann", "password": PASSWORD})
    assert response.status_code == 302
    response = Client().post("/admin/login/", {"username": "ann", "password": PASSWORD})
    assert response.status_code == 302
