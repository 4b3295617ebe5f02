"""Failed sign-ins (the site's and the admin's) and sign-ups are limited per account and per client
address (accounts.login_throttle), through real HTTP with Django's test client. django-ratelimit's
clock is the test's, so no window edge falls inside a test and a lock's end is reached by moving
the clock, not by waiting."""
import logging
import re
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.django_db

PASSWORD = "right-horse-battery-7"
TOKEN = "metrics-token-for-login-tests-0123"
LIMITS = dict(SMOLSITE_LOGIN_FAILURES_PER_ACCOUNT=4, SMOLSITE_LOGIN_FAILURES_PER_ADDRESS=6,
              SMOLSITE_LOGIN_LOCK_MINUTES=15, SMOLSITE_SIGNUPS_PER_HOUR=3, SMOLSITE_TRUSTED_PROXIES=0)


@pytest.fixture
def clock(monkeypatch):
    class Clock:
        now = datetime(2026, 3, 15, 12, 0, tzinfo=dt_timezone.utc)

        def advance(self, seconds):
            self.now += timedelta(seconds=seconds)

        def time(self):
            return self.now.timestamp()

    c = Clock()
    import django_ratelimit.core as ratelimit_core

    monkeypatch.setattr(ratelimit_core, "time", c)
    return c


@pytest.fixture(autouse=True)
def limits(settings):
    for name, value in LIMITS.items():
        setattr(settings, name, value)


def user(name, staff=False):
    return get_user_model().objects.create_user(name, password=PASSWORD, is_staff=staff)


def sign_in(address, username, password=PASSWORD, url="/accounts/login/", **headers):
    client = Client(REMOTE_ADDR=address, **headers)
    response = client.post(url, {"username": username, "password": password})
    return response, client


def signed_in(client):
    return "_auth_user_id" in client.session


def text(response):
    return response.content.decode()


def throttled_samples():
    with override_settings(SMOLSITE_METRICS_TOKEN=TOKEN):
        response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.content.decode())
            for s in family.samples if s.name == "smolsite_throttled_requests_total"}


def test_one_guesser_is_stopped_without_locking_the_owner_out_and_the_account_lock_ends(clock):
    user("alice")
    for _ in range(2):  # half the account's 4, from one address
        response, client = sign_in("10.0.0.1", "alice", "wrong-guess")
        assert response.status_code == 200 and not signed_in(client)
    # The guesser's address is stopped, the right password included...
    response, client = sign_in("10.0.0.1", "alice")
    assert response.status_code == 429 and not signed_in(client)
    assert re.search(r"Too many failed sign-ins for this account\. Try again in \d+ minutes?\.", text(response))
    assert int(response["Retry-After"]) > 0
    # ...but the owner, elsewhere, signs in.
    response, client = sign_in("10.0.0.2", "alice")
    assert response.status_code == 302 and signed_in(client)

    # Guessers at two more addresses fill the account's budget: now it is locked from anywhere.
    for address in ("10.0.0.3", "10.0.0.4"):
        assert sign_in(address, "alice", "wrong-guess")[0].status_code == 200
    response, client = sign_in("10.0.0.2", "alice")
    assert response.status_code == 429 and not signed_in(client)
    assert "for this account" in text(response)

    # Not forever: when the window ends the owner gets in.
    clock.advance(int(response["Retry-After"]) + 1)
    response, client = sign_in("10.0.0.2", "alice")
    assert response.status_code == 302 and signed_in(client)


def test_successes_do_not_count_and_one_address_is_limited_across_accounts(clock):
    for n in range(8):
        user(f"u{n}")
    # Many people behind one NAT address signing in: successes are not failures.
    for _ in range(3):
        for n in range(8):
            response, client = sign_in("192.0.2.7", f"u{n}")
            assert response.status_code == 302, n
    # One of them tries six accounts' passwords: the address is stopped...
    for n in range(6):
        assert sign_in("192.0.2.7", f"u{n}", "wrong-guess")[0].status_code == 200
    response, client = sign_in("192.0.2.7", "u7")
    assert response.status_code == 429 and not signed_in(client)
    assert "Too many failed sign-ins from your network address. Try again in" in text(response)
    # ...not anyone else's.
    assert sign_in("192.0.2.8", "u7")[0].status_code == 302


def test_another_spelling_of_the_username_shares_the_account_budget(clock):
    user("alice")
    for address, spelling in (("10.1.0.1", "Alice"), ("10.1.0.2", "ALICE"), ("10.1.0.3", "alice"),
                              ("10.1.0.4", "aLiCe")):
        assert sign_in(address, spelling, "wrong-guess")[0].status_code == 200
    response, client = sign_in("10.1.0.5", "alice")
    assert response.status_code == 429 and not signed_in(client)


def test_the_admin_login_is_throttled_too_and_refusals_are_logged_and_counted(clock, caplog):
    user("root", staff=True)
    before = throttled_samples()
    for _ in range(2):
        response, client = sign_in("10.2.0.1", "root", "wrong-guess", url="/admin/login/")
        assert response.status_code == 200 and not signed_in(client)
    with caplog.at_level(logging.WARNING, logger="accounts.login_throttle"):
        response, client = sign_in("10.2.0.1", "root", url="/admin/login/")
    assert response.status_code == 429 and not signed_in(client)
    assert "Too many failed sign-ins for this account. Try again in" in text(response)
    assert any("admin_login refused" in r.getMessage() and "10.2.0.1" in r.getMessage() for r in caplog.records)
    after = throttled_samples()
    key = (("action", "admin_login"), ("scope", "account"))
    assert after.get(key, 0) == before.get(key, 0) + 1
    # A staff member elsewhere still gets in.
    response, client = sign_in("10.2.0.2", "root", url="/admin/login/")
    assert response.status_code == 302 and signed_in(client)


def test_a_right_password_without_staff_on_the_admin_is_not_a_failure(clock):
    user("bob")
    for _ in range(3):
        response, _ = sign_in("10.3.0.1", "bob", url="/admin/login/")
        assert response.status_code == 200  # the admin's "not a staff account" form
    assert sign_in("10.3.0.1", "bob")[0].status_code == 302


def test_the_password_check_of_account_deletion_is_throttled_like_a_sign_in(clock):
    alice = user("alice")
    client = Client(REMOTE_ADDR="10.5.0.1")
    client.force_login(alice)
    for _ in range(2):
        response = client.post("/account/delete/", {"password": "wrong-guess", "confirm": "on"})
        assert response.status_code == 400 and "That is not your password." in text(response)
    response = client.post("/account/delete/", {"password": PASSWORD, "confirm": "on"})
    assert response.status_code == 429
    assert re.search(r"Too many failed sign-ins for this account\. Try again in \d+ minutes?\.", text(response))
    assert get_user_model().objects.filter(username="alice").exists()
    clock.advance(int(response["Retry-After"]) + 1)
    response = client.post("/account/delete/", {"password": PASSWORD, "confirm": "on"})
    assert response.status_code == 200 and not get_user_model().objects.filter(username="alice").exists()


def test_sign_up_is_limited_per_address(clock):
    def sign_up(address, name):
        client = Client(REMOTE_ADDR=address)
        return client.post("/accounts/signup/", {"username": name, "password1": PASSWORD,
                                                 "password2": PASSWORD}), client

    before = throttled_samples()
    for n in range(3):
        assert sign_up("198.51.100.1", f"new{n}")[0].status_code == 302
    response, client = sign_up("198.51.100.1", "new3")
    assert response.status_code == 429 and not signed_in(client)
    assert "Too many accounts were created from your network address. Try again in" in text(response)
    assert not get_user_model().objects.filter(username="new3").exists()
    key = (("action", "signup"), ("scope", "address"))
    assert throttled_samples().get(key, 0) == before.get(key, 0) + 1
    # Another address signs up; the first one can again an hour later.
    assert sign_up("198.51.100.2", "new3")[0].status_code == 302
    clock.advance(int(response["Retry-After"]) + 1)
    assert sign_up("198.51.100.1", "new4")[0].status_code == 302


# ---- the client address ---------------------------------------------------------------------------

def fail_from_many_forwarded(remote, forwarded):
    """Six failures, each claiming another X-Forwarded-For, from ``remote``; then a right password."""
    for n in range(6):
        sign_in(remote, f"x{n}", "wrong-guess", HTTP_X_FORWARDED_FOR=forwarded(n))
    return sign_in(remote, "alice", HTTP_X_FORWARDED_FOR=forwarded(99))[0]


def test_a_forged_forwarded_header_is_ignored_without_a_trusted_proxy(clock):
    user("alice")
    response = fail_from_many_forwarded("10.4.0.1", lambda n: f"203.0.113.{n}")
    assert response.status_code == 429 and "network address" in text(response)


def test_behind_a_trusted_proxy_the_address_it_saw_counts_not_what_the_client_wrote(clock, settings):
    settings.SMOLSITE_TRUSTED_PROXIES = 1
    user("alice")
    # The client writes any X-Forwarded-For it likes; the proxy appends the address it saw.
    response = fail_from_many_forwarded("10.9.9.9", lambda n: f"203.0.113.{n}, 198.51.100.50")
    assert response.status_code == 429 and "network address" in text(response)
    # Another client behind the same proxy (same REMOTE_ADDR) is someone else.
    assert sign_in("10.9.9.9", "alice", HTTP_X_FORWARDED_FOR="198.51.100.51")[0].status_code == 302


def test_ipv4_clients_of_a_dual_stack_socket_are_told_apart_and_an_ipv6_64_is_one_client(clock):
    user("alice")
    for n in range(6):
        assert sign_in("::ffff:192.0.2.1", f"x{n}", "wrong-guess")[0].status_code == 200
    assert sign_in("::ffff:192.0.2.1", "alice")[0].status_code == 429
    assert sign_in("::ffff:192.0.2.2", "alice")[0].status_code == 302  # someone else, not the same /64
    for n in range(6):  # one host holds a whole /64: its addresses are one client
        assert sign_in(f"2001:db8:0:1::{n + 1:x}", f"x{n}", "wrong-guess")[0].status_code == 200
    assert sign_in("2001:db8:0:1::ffff", "alice")[0].status_code == 429
    assert sign_in("2001:db8:0:2::1", "alice")[0].status_code == 302


@pytest.mark.redis
def test_scaled_out_the_counters_are_shared_through_redis(clock, settings):
    """Every web process reads the same counters: with REDIS_URL the cache (and so the throttle)
    is Redis; a failure counted by one process locks the account for all."""
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL (run `make test-redis`)")
    import redis

    user("alice")
    for _ in range(2):
        assert sign_in("10.6.0.1", "alice", "wrong-guess")[0].status_code == 200
    assert redis.Redis.from_url(settings.REDIS_URL).keys("*rl:*")  # django-ratelimit's counters, in Redis
    assert sign_in("10.6.0.1", "alice")[0].status_code == 429
    assert sign_in("10.6.0.2", "alice")[0].status_code == 302
