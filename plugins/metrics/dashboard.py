"""The staff dashboard's figures, from the database (chat.Message and the usage ledger), so they
cover the whole history and every worker, not just what this host's processes counted."""
from collections import defaultdict
from datetime import timedelta

from django.db.models import Avg, Count, Q, Sum
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone

from chat.models import Message
from usage.models import UsageRecord

MAX_DAYS = 90
# The queue-wait chart reads at most this many recent answers (computed per row, in Python).
QUEUE_ROWS = 20000
FAILED = ("error", "interrupted")
ENDED = ("done", "stopped", "error", "interrupted")


def _label(moment, hourly):
    return moment.strftime("%Y-%m-%d %H:00" if hourly else "%Y-%m-%d")


def _per_model_series(rows, field, hourly):
    series = defaultdict(dict)
    for row in rows:
        if row[field] is not None:
            series[row["model_name"] or "unknown"][_label(row["bucket"], hourly)] = round(row[field], 3)
    return {model: points for model, points in sorted(series.items())}


def _queue_wait(row):
    """Seconds between being queued and a worker starting it: the time from queued to finished,
    less the generation's own time (time to first token, then a token every 1/tokens_per_second)."""
    total = (row["finished_at"] - row["created_at"]).total_seconds()
    generating = row["ttft"] or 0.0
    if row["tokens_per_second"] and (row["completion_tokens"] or 0) > 1:
        generating += (row["completion_tokens"] - 1) / row["tokens_per_second"]
    return max(0.0, total - generating)


def figures(days=14, now=None):
    days = max(1, min(int(days), MAX_DAYS))
    now = now or timezone.now()
    since = now - timedelta(days=days)
    hourly = days <= 2
    trunc = TruncHour if hourly else TruncDay
    answers = Message.objects.filter(role="assistant", created_at__gte=since)

    speed = (answers.filter(status="done").annotate(bucket=trunc("created_at")).values("bucket", "model_name")
             .annotate(tps=Avg("tokens_per_second"), ttft=Avg("ttft")).order_by("bucket"))
    speed = list(speed)

    per_day = (answers.annotate(day=TruncDay("created_at")).values("day")
               .annotate(total=Count("id"), ended=Count("id", filter=Q(status__in=ENDED)),
                         failed=Count("id", filter=Q(status__in=FAILED))).order_by("day"))
    messages_per_day, error_rate = {}, {}
    for row in per_day:
        day = _label(row["day"], False)
        messages_per_day[day] = row["total"]
        error_rate[day] = round(row["failed"] / row["ended"], 4) if row["ended"] else 0.0

    waits = defaultdict(list)
    rows = (answers.filter(status__in=ENDED, finished_at__isnull=False)
            .order_by("-created_at")
            .values("created_at", "finished_at", "ttft", "tokens_per_second", "completion_tokens")[:QUEUE_ROWS])
    for row in rows:
        waits[_label(row["created_at"], hourly)].append(_queue_wait(row))
    queue_wait = {}
    for bucket in sorted(waits):
        values = sorted(waits[bucket])
        queue_wait[bucket] = {"mean": round(sum(values) / len(values), 3),
                              "p90": round(values[min(len(values) - 1, int(len(values) * 0.9))], 3)}

    top = (UsageRecord.objects.filter(created_at__gte=since).values("user__username")
           .annotate(tokens=Sum("total_tokens"), requests=Count("id")).order_by("-tokens")[:10])
    return {
        "days": days,
        "bucket": "hour" if hourly else "day",
        "since": since.isoformat(),
        "tokens_per_second": _per_model_series(speed, "tps", hourly),
        "ttft_seconds": _per_model_series(speed, "ttft", hourly),
        "messages_per_day": messages_per_day,
        "error_rate": error_rate,
        "queue_wait_seconds": queue_wait,
        "top_users": [{"user": r["user__username"], "tokens": r["tokens"] or 0, "requests": r["requests"]}
                      for r in top],
    }
