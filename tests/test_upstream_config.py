"""The upstream plugin's parts that need no upstream: configuration checks, the admin's write-only
key and read-only env rows, the circuit breaker (Django's cache), least-in-flight choice, error
messages made short and the reasoning marks."""
import pytest

from plugins.openai_upstream import breaker, config
from plugins.openai_upstream.balance import Balancer
from plugins.openai_upstream.client import error_text
from plugins.openai_upstream.discovery import sync_env_rows
from plugins.openai_upstream.models import UpstreamServer
from plugins.openai_upstream.reasoning import ReasoningMarks, mark

ADD = "/admin/openai_upstream/upstreamserver/add/"


def up(name="a", **extra):
    return config.make({"name": name, "base_url": "http://127.0.0.1:9/v1", **extra})


@pytest.mark.parametrize("data, says", [
    ({"name": "a", "base_url": "file:///etc/passwd"}, "http:// or https://"),
    ({"name": "a", "base_url": "http://user:pw@host/v1"}, "user name, password"),
    ({"name": "a b", "base_url": "http://host/v1"}, "name must be"),
    ({"name": "a", "base_url": "http://host/v1", "colour": 1}, "unknown field"),
    ({"name": "a", "base_url": "http://host/v1", "max_concurrency": 0}, "max_concurrency"),
    ({"name": "a", "base_url": "http://host/v1", "structured_output": "json"}, "structured_output"),
])
def test_bad_configuration_is_refused_naming_the_field(data, says):
    with pytest.raises(config.ConfigError) as refused:
        config.make(data)
    assert says in str(refused.value)


def test_env_list_skips_bad_entries_and_keeps_good_ones(settings):
    settings.SMOLSITE_UPSTREAMS = [{"name": "good", "base_url": "http://h:1/v1/", "api_key": "sk-hidden-789"},
                                   {"name": "bad", "base_url": "ftp://h"}]
    found = config.from_env()
    assert [u.name for u in found] == ["good"] and found[0].base_url == "http://h:1/v1"
    assert "sk-hidden-789" not in repr(found[0]) and found[0].api_key == "sk-hidden-789"  # the key is never in a repr (logs)


@pytest.mark.django_db
def test_admin_key_is_write_only_and_kept_when_left_empty(admin_client):
    response = admin_client.post(ADD, {"name": "gpu", "base_url": "http://10.0.0.1:8000/v1", "api_key": "sk-secret-123",
                                       "models": "", "prefix": "", "max_concurrency": 4, "connect_timeout": 5,
                                       "read_timeout": 60, "n_ctx": 8192, "tokenizer": "", "structured_output": "",
                                       "tools": "on", "enabled": "on"})
    assert response.status_code == 302, response.content[:2000]
    row = UpstreamServer.objects.get(name="gpu")
    assert row.api_key == "sk-secret-123"
    change = f"/admin/openai_upstream/upstreamserver/{row.pk}/change/"
    for path in (change, "/admin/openai_upstream/upstreamserver/", f"/admin/openai_upstream/upstreamserver/{row.pk}/history/"):
        page = admin_client.get(path)
        assert page.status_code == 200 and b"sk-secret-123" not in page.content
    response = admin_client.post(change, {"name": "gpu", "base_url": "http://10.0.0.2:8000/v1", "api_key": "",
                                          "models": "a\nb", "prefix": "", "max_concurrency": 4, "connect_timeout": 5,
                                          "read_timeout": 60, "n_ctx": 8192, "tokenizer": "",
                                          "structured_output": "", "tools": "on", "enabled": "on"})
    assert response.status_code == 302
    row.refresh_from_db()
    assert row.api_key == "sk-secret-123" and row.base_url == "http://10.0.0.2:8000/v1"
    assert [u.models for u in config.from_admin()] == [("a", "b")]
    bad = admin_client.post(change, {"name": "gpu", "base_url": "gopher://x", "max_concurrency": 4,
                                     "connect_timeout": 5, "read_timeout": 60, "n_ctx": 8192})
    assert bad.status_code == 200 and b"http:// or https://" in bad.content


@pytest.mark.django_db
def test_env_upstreams_show_read_only_without_their_key(admin_client):
    sync_env_rows([up("from-env", api_key="sk-env-456")])
    row = UpstreamServer.objects.get(name="from-env")
    assert row.from_env and row.api_key == ""
    change = f"/admin/openai_upstream/upstreamserver/{row.pk}/change/"
    page = admin_client.get(change)
    assert page.status_code == 200 and b"sk-env-456" not in page.content and b'name="_save"' not in page.content
    assert admin_client.post(change, {"name": "x", "base_url": "http://evil/v1"}).status_code == 403
    row.refresh_from_db()
    assert row.base_url == "http://127.0.0.1:9/v1"
    sync_env_rows([])  # removed from the environment: gone from the admin
    assert not UpstreamServer.objects.filter(name="from-env").exists()


def test_breaker_opens_after_failures_or_a_timeout_and_only_a_probe_closes_it():
    for _ in range(breaker.FAILURES - 1):
        breaker.failure("u1", "HTTP 502")
    assert not breaker.is_open("u1")
    breaker.failure("u1", "HTTP 502")
    assert breaker.is_open("u1")
    breaker.success("u1")
    assert breaker.is_open("u1")
    breaker.success("u1", probe=True)
    assert not breaker.is_open("u1")
    breaker.trip("u2", "did not answer in time")
    assert breaker.state("u2")["error"] == "did not answer in time"


def test_least_in_flight_never_by_chance_and_a_full_line_waits():
    a, b = up("a", max_concurrency=1), up("b", max_concurrency=1)

    def take():
        gen = balancer.acquire(lambda: [a, b], lambda: False)
        waited = []
        try:
            while True:
                waited.append(next(gen))  # told how many are ahead while it waits
                balancer.release("a")  # then someone finishes
        except StopIteration as done:
            return done.value, waited

    balancer = Balancer()
    first, _ = take()
    second, _ = take()
    assert {first.name, second.name} == {"a", "b"}
    third, waited = take()  # both full: it waits in line (0 ahead) until "a" is released
    assert third.name == "a" and waited[0] == 0


def test_upstream_errors_reach_users_short_and_without_markup():
    u = up("gpu")
    html = b"<html><body><h1>502 Bad Gateway</h1><pre>Traceback (most recent call last): ...</pre></body></html>"
    assert error_text(u, 502, html) == "The upstream gpu refused the request (HTTP 502)."
    long = ('{"error": {"message": "' + "x" * 5000 + '"}}').encode()
    message = error_text(u, 400, long)
    assert message.startswith("The upstream gpu refused the request (HTTP 400): xxx") and len(message) < 300


def test_marked_reasoning_goes_to_the_thinking_panel():
    marks = ReasoningMarks()
    assert marks.feed(mark("let me think")) == [("reasoning", "let me think")]
    assert marks.feed("The answer.") == [("text", "The answer.")]
    assert marks.finish() == []
