"""The scaled-out deployment across separate hosts, made with Linux network namespaces (issue 12,
"Scale-out across hosts"): PostgreSQL and Redis on one host, two web processes (daphne) on two
more, two Celery device workers on two more, and a client on its own. The hosts share one bridge
that lives in a namespace of its own; no namespace has a route anywhere else, so all traffic stays
on these namespaces (and each one's loopback).

Shown: a conversation streams to tabs on both web hosts; a worker killed mid-stream is absorbed
(both tabs are told "interrupted", the partial text is kept, and Retry is answered by the other
worker); cache-affine routing keeps a conversation on the worker holding its tokens (a follow-up
reuses them: cached_tokens). Everything started here is stopped, and every namespace deleted, when
the module ends, failed or not.

Needs root and iproute2 (skips saying so otherwise). It brings its own PostgreSQL and Redis, so it
runs once, in the SQLite pass (it skips when DATABASE_URL is set)."""
import asyncio
import ctypes
import http.cookiejar
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from browser_support import REPO
from live_stack import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.model, pytest.mark.timeout(1200)]

SUBNET = "10.231.0"  # private to this run's bridge namespace: runs cannot see each other
HOSTS = {"db": 2, "web1": 11, "web2": 12, "wk1": 21, "wk2": 22, "client": 50}
DB_IP = f"{SUBNET}.{HOSTS['db']}"
WEBS = {"web1": f"http://{SUBNET}.{HOSTS['web1']}:8000", "web2": f"http://{SUBNET}.{HOSTS['web2']}:8000"}
CLONE_NEWNET = 0x40000000
READY_SECONDS = 300  # a worker loading the model on a busy 2-core machine
ANSWER_SECONDS = 300
PASSWORD = "correct-horse-battery-9"
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)


def why_not():
    if os.environ.get("DATABASE_URL"):
        return "brings its own PostgreSQL and Redis: runs once, in the SQLite pass"
    if os.geteuid() != 0:
        return "needs root (ip netns add, veth, a bridge)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    if shutil.which("redis-server") is None or PG_BIN is None or shutil.which("setpriv") is None:
        return "needs redis-server, PostgreSQL's server binaries and setpriv"
    probe = f"smolprobe{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "cannot create network namespaces here (ip netns add failed: no CAP_SYS_ADMIN?)"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sh(*argv, timeout=120):
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


# ---- the hosts --------------------------------------------------------------------------------------

class Hosts:
    """One namespace per host plus one for the bridge between them."""

    def __init__(self):
        self.tag = f"{os.getpid() % 100000}"
        self.switch = f"smol{self.tag}-sw"
        self.made = []

    def ns(self, host):
        return f"smol{self.tag}-{host}"

    def up(self):
        sh("ip", "netns", "add", self.switch)
        self.made.append(self.switch)
        sh("ip", "netns", "exec", self.switch, "ip", "link", "add", "br0", "type", "bridge")
        sh("ip", "netns", "exec", self.switch, "ip", "link", "set", "br0", "up")
        for host, number in HOSTS.items():
            ns, port = self.ns(host), f"g{self.tag}{host}"[:15]
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "link", "add", port, "netns", self.switch, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "netns", "exec", self.switch, "ip", "link", "set", port, "master", "br0", "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{SUBNET}.{number}/24", "dev", "eth0")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        return self

    def down(self):
        for ns in reversed(self.made):  # deleting a namespace deletes its veth ends and the bridge
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made.clear()

    def routes(self, host):
        return sh("ip", "netns", "exec", self.ns(host), "ip", "-o", "route", "show", "table", "all")


class Processes:
    """Everything started in the hosts, each in a process group of its own (ended by that id)."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = {}

    def start(self, name, argv, env=None):
        log = open(self.workdir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        log.close()
        return self.procs[name]

    def log(self, name):
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def alive(self, name):
        return self.procs[name].poll() is None

    def kill(self, name, sig=signal.SIGKILL):
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(60)

    def stop_all(self):
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(20)
                except ProcessLookupError:
                    pass


# ---- the client host: a thread of this process inside the client namespace ----------------------

class ClientHost:
    """A thread that moved itself into the client namespace (a network namespace is per thread),
    running an event loop: every socket the client opens is opened there. Blocking calls (HTTP,
    SQL) run on that thread too, never on an executor (whose threads are in this host's namespace)."""

    def __init__(self, ns):
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(ns,), name="netns-client", daemon=True)
        self.thread.start()
        self.ready.wait(30)
        if self.error:
            raise self.error

    def _run(self, ns):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns into the client namespace failed")
            finally:
                os.close(fd)
        except Exception as exc:
            self.error = exc
            self.ready.set()
            return
        asyncio.set_event_loop(self.loop)
        self.ready.set()
        self.loop.run_forever()

    def run(self, coro, timeout=ANSWER_SECONDS + 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn, *args, timeout=120, **kwargs):
        async def wrapper():
            return fn(*args, **kwargs)

        return self.run(wrapper(), timeout)

    def stop(self):
        async def cancel_the_rest():  # open tabs' readers (a failed test leaves some)
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            self.run(cancel_the_rest(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


class Browser:
    """A signed-in person's HTTP session (cookies shared by both web hosts: one database)."""

    def __init__(self):
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                  urllib.request.HTTPCookieProcessor(self.jar))

    def cookie(self, name):
        return next((c.value for c in self.jar if c.name == name), None)  # the same on every host

    def request(self, url, data=None, timeout=20):
        body = None
        if data is not None:
            data = {**data, "csrfmiddlewaretoken": self.cookie("csrftoken") or ""}
            body = urllib.parse.urlencode(data).encode()
        request = urllib.request.Request(url, data=body, headers={"X-CSRFToken": self.cookie("csrftoken") or ""})
        try:
            with self.opener.open(request, timeout=timeout) as response:
                return response.status, response.geturl(), response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, url, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            return None, url, str(exc)
        finally:
            self._share(urllib.parse.urlsplit(url).hostname)

    def _share(self, source):
        """Both web hosts serve one site (as behind one name): a cookie one sets is the other's too."""
        hosts = [urllib.parse.urlsplit(w).hostname for w in WEBS.values()]
        for c in [c for c in self.jar if c.domain == source]:
            for host in hosts:
                if host != source:
                    self.jar.set_cookie(http.cookiejar.Cookie(
                        c.version, c.name, c.value, c.port, c.port_specified, host, False, False, c.path,
                        c.path_specified, c.secure, c.expires, c.discard, c.comment, c.comment_url, c._rest))


def signup(browser, web, username):
    browser.request(web + "/accounts/signup/")  # the CSRF cookie
    status, url, body = browser.request(web + "/accounts/signup/", {
        "username": username, "password1": PASSWORD, "password2": PASSWORD})
    assert status == 200 and re.search(r"/c/\d+/$", url), (status, url, body[:500])


def new_chat(browser, web, model, **settings):
    status, url, body = browser.request(web + "/new/", {})
    assert status == 200, (status, body[:300])
    conv = int(re.search(r"/c/(\d+)/$", url).group(1))
    assert browser.request(web + f"/c/{conv}/model/", {"model": model})[0] == 200
    if settings:
        form = {"system_prompt": "", "temperature": "0", "top_p": "1", "max_tokens": "16", **settings}
        assert browser.request(web + f"/c/{conv}/settings/", form)[0] == 200
    return conv


def workers_ready(browser, web):
    """The device workers /readyz lists with a loaded model (the worker list is for staff)."""
    status, _, body = browser.request(web + "/readyz")
    if status not in (200, 503):
        return []
    return [w for w in json.loads(body)["checks"]["workers"].get("workers", []) if w.get("models")]


class Tab:
    """A chat page's websocket on one web host: collects every frame it receives."""

    def __init__(self, browser, web, conv):
        self.url = web.replace("http://", "ws://") + f"/ws/chat/{conv}/"
        self.headers = {"Cookie": f"sessionid={browser.cookie('sessionid')}", "Origin": web}
        self.frames = []
        self.changed = asyncio.Event()

    async def open(self):
        from websockets.asyncio.client import connect

        self.ws = await connect(self.url, additional_headers=self.headers, max_size=None, open_timeout=30)
        self.reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self):
        async for text in self.ws:
            self.frames.append(json.loads(text))
            self.changed.set()

    async def send(self, frame):
        await self.ws.send(json.dumps(frame))

    async def until(self, predicate, timeout=ANSWER_SECONDS, what="the awaited frame"):
        try:
            async with asyncio.timeout(timeout):
                while True:
                    value = predicate()
                    if value:
                        return value
                    assert not self.reader.done(), f"the socket to {self.url} closed: {self.frames[-3:]}"
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"{self.url} got no {what} in {timeout} s; its last frames: "
                                 f"{json.dumps(self.frames[-3:])[:1500]}") from None

    def events(self, message):
        return [e for f in self.frames if f["type"] == "events" and f["message"] == message for e in f["events"]]

    def text(self, message):
        return "".join(e["text"] for e in self.events(message) if e["kind"] == "text")

    def done(self, message):
        return next((e for e in self.events(message) if e["kind"] == "done"), None)

    def ended(self, message):
        """How the message ended, as this tab learnt it: its "done" event, or (when the end was
        announced from the saved text, behind what the tab had already streamed, as the reaper
        does) the "final" frame alone."""
        done = self.done(message)
        if done:
            return done["status"]
        final = next((f for f in self.frames if f["type"] == "final" and f["message"] == message), None)
        return re.search(r'data-status="(\w+)"', final["html"]).group(1) if final else None

    def active(self, after=None):
        """The id of the newest answer this tab was told of (a "thread" frame), newer than ``after``."""
        ids = [f["active"] for f in self.frames if f["type"] == "thread"]
        return ids[-1] if ids and ids[-1] != after else None

    async def close(self):
        await self.ws.close()
        self.reader.cancel()


def message_row(pk):
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(f"postgresql://postgres@{DB_IP}:5432/smolsite", connect_timeout=10,
                         row_factory=dict_row) as db:
        return db.execute("SELECT id, status, content, error, worker_id, cached_tokens, prompt_tokens "
                          "FROM chat_message WHERE id = %s", (pk,)).fetchone()


def words(count, prefix):
    return " ".join(f"{prefix}{i:03d}" for i in range(1, count + 1))


# ---- the deployment -----------------------------------------------------------------------------------

class Deployment:
    def __init__(self, default_model_path):
        self.workdir = Path(tempfile.mkdtemp(prefix="smolsite-netns-"))
        self.hosts = Hosts()
        self.procs = Processes(self.workdir)
        self.client = None
        models = {
            "smollm2-135m": {"path": default_model_path, "n_ctx": 2048, "threads": 1, "device": "cpu"},
            # 50 ms a word: an answer long enough to kill its worker in the middle of it.
            "echo": {"path": "", "backend": "echo", "n_ctx": 8192, "device": "cpu", "delay": 0.05},
        }
        keep = {"PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "SMOLSITE_LLAMA_LIB"}
        self.env = {k: v for k, v in os.environ.items() if k in keep}
        self.env.update({
            "DJANGO_SETTINGS_MODULE": "smolsite.settings", "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": f"postgres://postgres@{DB_IP}:5432/smolsite", "REDIS_URL": f"redis://{DB_IP}:6379/0",
            "SECRET_KEY": secrets.token_urlsafe(40),  # one key for both web hosts: sessions work on either
            "ALLOWED_HOSTS": ",".join(urllib.parse.urlsplit(w).hostname for w in WEBS.values()),
            "SMOLSITE_MODELS": json.dumps(models), "SMOLSITE_DEFAULT_MODEL": "echo", "SMOLSITE_SIGNUP_OPEN": "1",
            "SMOLSITE_BLOCKED_PLUGINS": "hello", "SMOLSITE_REAPER_SECONDS": "1", "SMOLSITE_DEVICE": "cpu",
            "SMOLSITE_BATCH_DRIVER": "0",
        })

    def env_for(self, host):
        var = self.workdir / host
        var.mkdir(exist_ok=True)
        return {**self.env, "SMOLSITE_VAR_DIR": str(var)}

    def in_host(self, host, *argv):
        return ["ip", "netns", "exec", self.hosts.ns(host), *argv]

    def up(self):
        self.hosts.up()
        self._database_host()
        self.client = ClientHost(self.hosts.ns("client"))
        py = sys.executable
        migrate = subprocess.run(self.in_host("web1", py, "manage.py", "migrate", "--noinput", "-v0"), cwd=REPO,
                                 env=self.env_for("web1"), capture_output=True, text=True, timeout=600)
        assert migrate.returncode == 0, migrate.stderr[-3000:]
        for web, url in WEBS.items():
            host = urllib.parse.urlsplit(url).hostname
            self.procs.start(web, self.in_host(web, py, "-m", "daphne", "-b", host, "-p", "8000",
                                                 "smolsite.asgi:application"), self.env_for(web))
        celery = str(Path(py).with_name("celery"))
        for worker in ("wk1", "wk2"):
            self.procs.start(worker, self.in_host(worker, celery, "-A", "smolsite", "worker", "-Q", "device.cpu",
                                                  "--pool", "threads", "--concurrency", "8", "-n", f"{worker}@%h",
                                                  "--loglevel", "INFO", "--without-gossip", "--without-mingle"),
                             self.env_for(worker))
        for web, url in WEBS.items():
            wait_for(lambda: self._up(web, url), READY_SECONDS, f"{web} answering /healthz")
        return self

    def _up(self, name, url):
        assert self.procs.alive(name), f"{name} exited:\n{self.procs.log(name)}"
        status, _, _ = self.client.call(Browser().request, url + "/healthz")
        return status == 200

    def _database_host(self):
        pg = self.workdir / "pg"
        pg.mkdir()
        shutil.chown(self.workdir, "postgres", "postgres")
        shutil.chown(pg, "postgres", "postgres")
        as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups"]
        sh(*as_postgres, str(PG_BIN / "initdb"), "-D", str(pg / "data"), "-A", "trust", "-U", "postgres",
           "--no-sync", "-E", "UTF8", timeout=300)
        with open(pg / "data" / "pg_hba.conf", "a") as hba:  # the other hosts, over the bridge
            hba.write(f"host all all {SUBNET}.0/24 trust\n")
        self.procs.start("postgres", self.in_host("db", *as_postgres, str(PG_BIN / "postgres"), "-D", str(pg / "data"),
                                                  "-c", f"listen_addresses={DB_IP}", "-p", "5432", "-k", str(pg),
                                                  "-c", "fsync=off", "-c", "max_connections=200"))
        self.procs.start("redis", self.in_host("db", "redis-server", "--bind", DB_IP, "--port", "6379", "--save", "",
                                               "--protected-mode", "no",  # reachable only over this run's bridge
                                               "--appendonly", "no", "--dir", str(self.workdir)))
        wait_for(lambda: subprocess.run(self.in_host("db", str(PG_BIN / "pg_isready"), "-h", DB_IP, "-q")).returncode
                 == 0, 120, "PostgreSQL on the database host")
        wait_for(lambda: subprocess.run(self.in_host("db", "redis-cli", "-h", DB_IP, "ping"), capture_output=True)
                 .stdout.strip() == b"PONG", 60, "Redis on the database host")
        sh(*self.in_host("db", *as_postgres, str(PG_BIN / "createdb"), "-h", DB_IP, "-U", "postgres", "smolsite"))

    def worker_of(self, worker_id):
        """Which worker host a worker id (device@hostname:pid) names."""
        pid = int(worker_id.rsplit(":", 1)[1])
        return next(name for name in ("wk1", "wk2") if self.procs.procs[name].pid == pid)

    def down(self):
        if self.client:
            self.client.stop()
        self.procs.stop_all()
        self.hosts.down()

    def logs(self):
        return "\n".join(f"--- {name}\n{self.procs.log(name)}" for name in self.procs.procs)


@pytest.fixture(scope="module")
def deployment(default_model_path, request):
    reason = why_not()
    if reason:
        pytest.skip(reason)
    stack = Deployment(default_model_path)
    failed = request.session.testsfailed
    try:
        try:
            stack.up()
        except BaseException:
            print(stack.logs())  # shown with the failure
            raise
        yield stack
        if request.session.testsfailed > failed:
            print(stack.logs())  # every host's log tail, with the last test's report
    finally:
        stack.down()
        # Nothing is left: no namespace of this run, no process.
        leftover = [n for n in sh("ip", "netns", "list").split() if n.startswith(f"smol{stack.hosts.tag}-")]
        assert not leftover, leftover
        shutil.rmtree(stack.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def person(deployment):
    browser = Browser()
    deployment.client.call(signup, browser, WEBS["web1"], "nora")  # the first account: the administrator
    ready = wait_for(lambda: len(deployment.client.call(workers_ready, browser, WEBS["web2"])) == 2 and
                     deployment.client.call(workers_ready, browser, WEBS["web2"]), READY_SECONDS,
                     "two device workers with the model loaded")
    assert {deployment.worker_of(w["id"]) for w in ready} == {"wk1", "wk2"}
    return browser


# ---- the tests -------------------------------------------------------------------------------------------

def test_every_host_reaches_only_the_bridge_and_its_loopback(deployment):
    for host, number in HOSTS.items():
        routes = deployment.hosts.routes(host)
        assert "default" not in routes, (host, routes)
        devices = set(re.findall(r"\bdev (\S+)", routes))
        assert devices <= {"eth0", "lo"}, (host, routes)
        assert f"{SUBNET}.0/24 dev eth0" in routes and f"src {SUBNET}.{number}" in routes
    assert "default" not in deployment.hosts.routes("db")


def test_a_conversation_streams_to_tabs_on_both_web_hosts(deployment, person):
    conv = deployment.client.call(new_chat, person, WEBS["web1"], "echo")
    question = words(60, "both")

    async def scenario():
        tabs = [await Tab(person, WEBS["web1"], conv).open(), await Tab(person, WEBS["web2"], conv).open()]
        await tabs[0].send({"action": "send", "content": question})
        reply = await tabs[1].until(tabs[1].active)  # the other host's tab is told of the new turn
        for tab in tabs:
            await tab.until(lambda: tab.done(reply))
        for tab in tabs:
            await tab.close()
        return reply, tabs

    reply, tabs = deployment.client.run(scenario())
    row = deployment.client.call(message_row, reply)
    assert row["status"] == "done" and row["content"] == question  # the echo model answers with the words
    for tab in tabs:
        seqs = [e["seq"] for e in tab.events(reply)]
        assert seqs == list(range(1, len(seqs) + 1)), (tab.url, seqs)  # no gap, no duplicate
        assert tab.text(reply) == question and tab.done(reply)["status"] == "done"
    assert deployment.worker_of(row["worker_id"]) in ("wk1", "wk2")


def test_cache_affine_routing_keeps_a_conversation_on_its_worker(deployment, person):
    conv = deployment.client.call(new_chat, person, WEBS["web2"], "smollm2-135m", max_tokens="12")
    turns = ["Remember the colour teal. " * 6 + "Which colour did I say?", "And which colour comes after it?",
             "Name one more colour."]

    async def scenario():
        tab = await Tab(person, WEBS["web1"], conv).open()
        replies = []
        for content in turns:
            await tab.send({"action": "send", "content": content})
            reply = await tab.until(lambda: tab.active(replies[-1] if replies else None))
            await tab.until(lambda: tab.done(reply))
            replies.append(reply)
        await tab.close()
        return replies

    rows = [deployment.client.call(message_row, r) for r in deployment.client.run(scenario())]
    assert all(r["status"] == "done" for r in rows), rows
    holder = rows[0]["worker_id"]
    # Both workers were there to take any turn; every follow-up went to the one holding the tokens,
    # and prefilled only its new ones.
    assert len(deployment.client.call(workers_ready, person, WEBS["web1"])) == 2
    assert [r["worker_id"] for r in rows] == [holder] * len(rows), rows
    for earlier, follow in zip(rows, rows[1:]):
        assert follow["cached_tokens"] >= earlier["prompt_tokens"] // 2, (earlier, follow)


def test_a_worker_killed_mid_stream_is_absorbed(deployment, person):
    conv = deployment.client.call(new_chat, person, WEBS["web2"], "echo")
    question = words(800, "long")

    async def scenario():
        tabs = [await Tab(person, WEBS["web1"], conv).open(), await Tab(person, WEBS["web2"], conv).open()]
        await tabs[0].send({"action": "send", "content": question})
        reply = await tabs[0].until(tabs[0].active)
        await tabs[1].until(lambda: len(tabs[1].text(reply).split()) >= 20)  # well into the answer
        while not (row := message_row(reply))["content"]:  # and some of it saved
            await asyncio.sleep(0.2)
        victim = deployment.worker_of(row["worker_id"])
        deployment.procs.kill(victim)  # SIGKILL: no goodbye, its heartbeat just stops
        for tab in tabs:
            await tab.until(lambda: tab.ended(reply), what="the interrupted answer's end")
        partial = message_row(reply)
        # Retry, from the other web host's tab: the surviving worker answers.
        await tabs[1].send({"action": "regenerate"})
        retry = await tabs[1].until(lambda: tabs[1].active(reply))
        for tab in tabs:
            await tab.until(lambda: tab.done(retry))
        for tab in tabs:
            await tab.close()
        return reply, retry, victim, row, partial, tabs

    reply, retry, victim, before_kill, partial, tabs = deployment.client.run(scenario())
    assert not deployment.procs.alive(victim)
    for tab in tabs:
        assert tab.ended(reply) == "interrupted", tab.frames[-2:]
        assert tab.done(retry)["status"] == "done"
        assert tab.text(retry) == question
    assert partial["status"] == "interrupted" and "worker stopped" in partial["error"]
    # The partial text is kept: at least what was saved before the kill, and a prefix of the answer.
    assert partial["content"] and question.startswith(partial["content"])
    assert len(partial["content"]) >= len(before_kill["content"])
    answered = deployment.client.call(message_row, retry)
    assert answered["status"] == "done" and answered["content"] == question
    survivor = deployment.worker_of(answered["worker_id"])
    assert survivor != victim and deployment.procs.alive(survivor)
