"""Quota and rate-limit checks, made before anything is enqueued, for the chat page and the API
alike, in the transaction that creates the generations' rows.

* requests per minute: django-ratelimit's fixed window in the cache (atomic add/incr);
* concurrent generations: the user's pending and streaming answers;
* tokens per day and per month (UTC calendar): the ledger's total since the window began, plus
  the tokens in-flight generations may still use (their max tokens), plus what the new
  generations may use. The check runs with the user's quota row locked (``select_for_update``;
  on SQLite every write transaction is IMMEDIATE, which serialises them as well), so two
  requests racing for the last tokens are decided one after the other.
"""
import calendar
import math
from dataclasses import dataclass
from datetime import timedelta, timezone as dt_timezone

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.db.models import Count, Sum
from django.utils import timezone
from django_ratelimit.core import get_usage

from .models import SiteQuota, UsageRecord, UserQuota

RATE_GROUP = "smolsite.generations"


def clock():
    """Now (tests replace it to control the day and month windows)."""
    return timezone.now()


class QuotaExceeded(Exception):
    """``kind``: requests (per minute), concurrency or tokens; ``retry_after`` in whole seconds."""

    def __init__(self, message, kind, retry_after=None):
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


@dataclass
class Effective:
    requests_per_minute: object = None
    tokens_per_day: object = None
    tokens_per_month: object = None
    concurrent_generations: object = None


def effective_limits(user_quota, site=None):
    """A user's own limits where set, the site default elsewhere (None: no limit)."""
    site = site or SiteQuota.current()
    values = {}
    for name in UserQuota.FIELDS:
        own = getattr(user_quota, name, None) if user_quota is not None else None
        values[name] = own if own is not None else getattr(site, name)
    return Effective(**values)


def day_start(now):
    now = now.astimezone(dt_timezone.utc)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now):
    return day_start(now).replace(day=1)


def next_month(now):
    start = month_start(now)
    return start + timedelta(days=calendar.monthrange(start.year, start.month)[1])


# The generations a user has in flight hold their reserved tokens on their own rows, which live in
# an app above usage (chat.Message.reserved_tokens): chat registers how to find them at startup
# (chat.apps), since usage never imports it.
_generations_in_flight = None


def count_in_flight_with(rows):
    """Register ``rows(user_id)``: a queryset of the user's generations pending or streaming, each
    with ``reserved_tokens``."""
    global _generations_in_flight
    _generations_in_flight = rows


def _active(user_id):
    if _generations_in_flight is None:
        raise ImproperlyConfigured("usage.quotas: no app registered its generations in flight (chat.apps does)")
    return _generations_in_flight(user_id)


def tokens_used(user_id, since):
    return UsageRecord.objects.filter(user_id=user_id, created_at__gte=since).aggregate(
        n=Sum("total_tokens"))["n"] or 0


def in_flight(user_id):
    """(generations pending or streaming, the tokens they may still use)."""
    row = _active(user_id).aggregate(n=Count("id"), tokens=Sum("reserved_tokens"))
    return row["n"] or 0, row["tokens"] or 0


def lock_quota_row(user_id):
    """The user's quota row, locked until the surrounding transaction ends (made if missing)."""
    quota = UserQuota.objects.select_for_update().filter(user_id=user_id).first()
    if quota is None:
        try:
            with transaction.atomic():
                UserQuota.objects.create(user_id=user_id)
        except IntegrityError:  # made by a concurrent request: wait for its lock below
            pass
        quota = UserQuota.objects.select_for_update().get(user_id=user_id)
    return quota


def _seconds(delta):
    return max(1, math.ceil(delta.total_seconds()))


def check_rate(user_id, limit):
    """Counts one request against ``limit`` per minute; raises when over it."""
    if limit is None:
        return
    usage = get_usage(None, group=RATE_GROUP, key=lambda group, request: str(user_id), rate=f"{limit}/m",
                      increment=True)
    if usage and usage["should_limit"]:
        raise QuotaExceeded(f"Rate limit reached: {limit} requests per minute. Try again in "
                            f"{max(1, usage['time_left'])} s.", "requests", max(1, usage["time_left"]))


def reserve(user_id, tokens, count=1):
    """Check every limit for ``count`` new generations that may use ``tokens`` tokens in all.
    Must run inside ``transaction.atomic()`` that then creates their rows (with
    ``reserved_tokens`` set), so the reservation and the rows commit together."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("usage.quotas.reserve must run inside the transaction that creates the rows")
    quota = lock_quota_row(user_id)
    limits = effective_limits(quota)
    check_rate(user_id, limits.requests_per_minute)
    if limits.concurrent_generations is None and limits.tokens_per_day is None and limits.tokens_per_month is None:
        return
    active, reserved = in_flight(user_id)
    if limits.concurrent_generations is not None and active + count > limits.concurrent_generations:
        raise QuotaExceeded(
            f"Too many answers at once: {active} generating and {count} more asked for; your limit is "
            f"{limits.concurrent_generations} at a time. Wait for one to finish.", "concurrency", 1)
    now = clock()
    for limit, since, until, period in (
            (limits.tokens_per_day, day_start(now), day_start(now) + timedelta(days=1), "today"),
            (limits.tokens_per_month, month_start(now), next_month(now), "this month")):
        if limit is None:
            continue
        used = tokens_used(user_id, since)
        left = max(0, limit - used - reserved)
        if tokens > left:
            reset = until.strftime("%Y-%m-%d %H:%M UTC")
            raise QuotaExceeded(
                f"Token quota reached: this may use up to {tokens:,} tokens (max tokens) but {left:,} of your "
                f"{limit:,} tokens {period} are left ({used:,} used, {reserved:,} held by answers in progress). "
                f"Lower max tokens or wait until {reset}.", "tokens", _seconds(until - now))


def summary(user_id):
    """What the account page shows: limits, use and what is left."""
    now = clock()
    limits = effective_limits(UserQuota.objects.filter(user_id=user_id).first())
    active, reserved = in_flight(user_id)
    today = tokens_used(user_id, day_start(now))
    month = tokens_used(user_id, month_start(now))

    def left(limit, used):
        return None if limit is None else max(0, limit - used - reserved)

    return {
        "limits": limits,
        "tokens_today": today,
        "tokens_month": month,
        "left_today": left(limits.tokens_per_day, today),
        "left_month": left(limits.tokens_per_month, month),
        "active": active,
        "reserved": reserved,
        "day_resets": day_start(now) + timedelta(days=1),
        "month_resets": next_month(now),
    }


