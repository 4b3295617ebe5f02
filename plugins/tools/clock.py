"""The current date and time where the user is (their browser's time zone) or in a named zone."""
import zoneinfo
from datetime import datetime, timezone

SCHEMA = {
    "type": "object",
    "properties": {
        "time_zone": {
            "type": "string", "maxLength": 64,
            "description": "An IANA time zone such as Europe/Paris or America/New_York; "
                           "leave it out for the user's own time zone.",
        },
    },
    "additionalProperties": False,
}
DESCRIPTION = "Get the current date and time, in the user's time zone or in a given IANA time zone."


def _zone(name):
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # ValueError: a path-like or empty key
        return None


def _offset(moment):
    minutes = int(moment.utcoffset().total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def describe(moment, zone_name):
    return (f"{moment:%A}, {moment.day} {moment:%B %Y}, {moment:%H:%M:%S} in {zone_name} ({_offset(moment)}). "
            f"ISO 8601: {moment.isoformat(timespec='seconds')}")


def current_time(arguments, context, now=None):
    now = now or datetime.now(timezone.utc)
    asked = arguments.get("time_zone")
    if asked:
        zone = _zone(asked)
        if zone is None:
            raise ValueError(f"unknown time zone {asked!r}: give an IANA name such as Europe/Paris")
        return describe(now.astimezone(zone), asked)
    zone = _zone(context.time_zone or "UTC")
    if zone is None:  # the browser's value is not trusted to be a zone this server knows
        note = f" (the user's time zone {context.time_zone!r} is unknown)"
        return describe(now.astimezone(timezone.utc), "UTC") + note
    return describe(now.astimezone(zone), context.time_zone or "UTC")
