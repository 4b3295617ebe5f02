"""Which upstream servers there are: the JSON list in SMOLSITE_UPSTREAMS (automated deployments) and
the admin's Upstream rows, read again at every probe, so a change needs no restart.

An upstream is only ever reached at its configured base URL plus a fixed path ("/models",
"/chat/completions", "/completions"); nothing a user sends becomes part of a URL."""
import json
import logging
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from django.conf import settings

logger = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
STRUCTURED = ("", "grammar")  # "grammar": GBNF in the request's "grammar" field (llama.cpp's servers)
FIELDS = ("name", "base_url", "api_key", "models", "prefix", "max_concurrency", "connect_timeout", "read_timeout",
          "enabled", "n_ctx", "tokenizer", "structured_output", "tools")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Upstream:
    name: str
    base_url: str  # e.g. http://gpu-1:8000/v1 (no trailing slash)
    api_key: str = field(default="", repr=False, compare=False)
    models: tuple = ()  # allowlist of the upstream's model ids; empty: every model it lists
    prefix: str = ""  # put before each model's name here ("gpu/" serves "llama-3" as "gpu/llama-3")
    max_concurrency: int = 16
    connect_timeout: float = 5.0
    read_timeout: float = 60.0  # the longest silence within an answer (and before its first token)
    enabled: bool = True
    n_ctx: int = 8192  # the context its models have (prompt plus answer)
    tokenizer: str = ""  # a GGUF file whose vocabulary counts tokens when the upstream sends no usage
    structured_output: str = ""
    tools: bool = True  # passes "tools" through (OpenAI function calling)
    source: str = "env"  # "env" or "admin"


def _number(value, name, kind, low, high):
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, not {value!r}") from None
    if isinstance(value, bool) or not low <= number <= high:
        raise ConfigError(f"{name} must be from {low} to {high}, not {value!r}")
    return number


def check_base_url(url):
    if not isinstance(url, str):
        raise ConfigError("base_url must be a string")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"base_url must be an http:// or https:// URL, not {url[:100]!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError("base_url may not hold a user name, password, query or fragment (the key goes in api_key)")
    return url.strip().rstrip("/")


def make(data, source="env"):
    """An Upstream from a dict of FIELDS; raises ConfigError naming the bad field."""
    if not isinstance(data, dict):
        raise ConfigError("each upstream must be a JSON object")
    unknown = set(data) - set(FIELDS)
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(FIELDS)}")
    name = data.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"name must be 1 to 64 letters, digits, '.', '_' or '-', not {name!r}")
    models = data.get("models") or ()
    if isinstance(models, str):
        models = [m for m in re.split(r"[\s,]+", models) if m]
    if not isinstance(models, (list, tuple)) or any(not isinstance(m, str) for m in models):
        raise ConfigError(f"{name}: models must be a list of model ids")
    structured = data.get("structured_output") or ""
    if structured not in STRUCTURED:
        raise ConfigError(f"{name}: structured_output must be '' or 'grammar', not {structured!r}")
    key = data.get("api_key") or ""
    if not isinstance(key, str):
        raise ConfigError(f"{name}: api_key must be a string")
    return Upstream(
        name=name, base_url=check_base_url(data.get("base_url")), api_key=key, models=tuple(models),
        prefix=str(data.get("prefix") or ""),
        max_concurrency=_number(data.get("max_concurrency", 16), "max_concurrency", int, 1, 4096),
        connect_timeout=_number(data.get("connect_timeout", 5), "connect_timeout", float, 0.1, 600),
        read_timeout=_number(data.get("read_timeout", 60), "read_timeout", float, 0.1, 3600),
        enabled=bool(data.get("enabled", True)), n_ctx=_number(data.get("n_ctx", 8192), "n_ctx", int, 16, 10_000_000),
        tokenizer=str(data.get("tokenizer") or ""), structured_output=structured, tools=bool(data.get("tools", True)),
        source=source)


def from_env():
    raw = getattr(settings, "SMOLSITE_UPSTREAMS", None) or []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            logger.error("SMOLSITE_UPSTREAMS is not valid JSON (%s): no upstream from it", exc)
            return []
    if not isinstance(raw, list):
        logger.error("SMOLSITE_UPSTREAMS must be a JSON list of objects: no upstream from it")
        return []
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(make(item, "env"))
        except ConfigError as exc:  # one bad entry never takes the others (or the site) down
            logger.error("SMOLSITE_UPSTREAMS[%d] is skipped: %s", i, exc)
    return out


def from_admin():
    from django.db import DatabaseError

    from .models import UpstreamServer

    try:
        rows = list(UpstreamServer.objects.filter(from_env=False))
    except DatabaseError:  # not migrated yet, or the database is restarting: the env ones still work
        return []
    out = []
    for row in rows:
        try:
            out.append(make(row.as_config(), "admin"))
        except ConfigError as exc:
            logger.error("upstream %r (admin) is skipped: %s", row.name, exc)
    return out


def all_upstreams():
    """Every configured upstream, env first; a name the env took is not taken again."""
    seen, out = set(), []
    for upstream in from_env() + from_admin():
        if upstream.name not in seen:
            seen.add(upstream.name)
            out.append(upstream)
    return out
