"""Failed sign-ins (the site's login and Django admin's) and sign-ups, limited per account and per
client address with django-ratelimit's fixed windows in the shared cache.

Only failures count. Each attempt is counted before its password is checked (an atomic increment,
so a burst of parallel guesses cannot all slip past the check) and a success is then counted as
"cleared": failures = attempts - cleared. Three counters per attempt, each with its own window of
SMOLSITE_LOGIN_LOCK_MINUTES:

* the account (any address): SMOLSITE_LOGIN_FAILURES_PER_ACCOUNT; past it the account is locked,
  right password included, until its window ends. It bounds guessing one account from many
  addresses, and the price is that such a botnet can keep the owner out while it keeps guessing;
* the account from one address: half of that, so one guesser at one address is stopped before the
  account locks, and cannot keep the owner (elsewhere) out;
* the client address (any account): SMOLSITE_LOGIN_FAILURES_PER_ADDRESS, larger, because one
  address may be a NAT with many people behind it; it stops one address trying many accounts.

The account is the username as typed, NFKC-normalised and case-folded, so spelling it another way
does not give a guesser a fresh budget (and unknown usernames lock the same way: nothing is told
about which accounts exist)."""
import logging
import math
import unicodedata

from django.conf import settings
from django.core.exceptions import ValidationError
from django_ratelimit.core import get_usage

from .client_address import address_key

logger = logging.getLogger(__name__)

MESSAGES = {
    "account": "Too many failed sign-ins for this account. Try again in {wait}.",
    "address": "Too many failed sign-ins from your network address. Try again in {wait}.",
    "signup": "Too many accounts were created from your network address. Try again in {wait}.",
}


class Throttled(Exception):
    def __init__(self, scope, retry_after):
        self.scope, self.retry_after = scope, max(1, retry_after)
        super().__init__(MESSAGES[scope].format(wait=wait_words(self.retry_after)))


def wait_words(seconds):
    if seconds < 60:
        return "1 minute" if seconds > 0 else "a moment"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def refused(request, action, scope, who, retry_after):
    """Log a refused request and tell the plugins (the metrics plugin counts it in /metrics)."""
    logger.warning("%s refused by the per-%s limit%s, from %s; %d s left", action, scope, who,
                   address_key(request), retry_after)
    try:
        from inference.plugins import get_plugin_manager

        get_plugin_manager().hook.request_throttled(action=action, scope=scope)
    except Exception:  # an observer never turns a clear refusal into a 500
        logger.exception("a request_throttled hook failed")


def _count(group, value, rate, increment):
    usage = get_usage(None, group=f"smolsite.{group}", key=lambda g, r: value, rate=rate, increment=increment)
    return usage or {"count": 0, "time_left": 0}  # None: RATELIMIT_ENABLE is off


class LoginAttempt:
    def __init__(self, request, username, action):
        self.request, self.action = request, action
        self.account = unicodedata.normalize("NFKC", username).casefold()
        address = address_key(request)
        per_account = settings.SMOLSITE_LOGIN_FAILURES_PER_ACCOUNT
        per_address = settings.SMOLSITE_LOGIN_FAILURES_PER_ADDRESS
        self.rate_minutes = max(1, settings.SMOLSITE_LOGIN_LOCK_MINUTES)
        # (scope the message names, counter, key, most failures)
        self.counters = [c for c in [
            ("account", "account", self.account, per_account),
            ("account", "account-address", f"{self.account}\n{address}", max(1, per_account // 2)),
            ("address", "address", address, per_address),
        ] if c[3] > 0]

    def _failures(self, counter, value, limit, increment):
        rate = f"{limit}/{self.rate_minutes}m"
        attempts = _count(f"login.{counter}.attempts", value, rate, increment)
        cleared = _count(f"login.{counter}.cleared", value, rate, False)
        return attempts["count"] - cleared["count"], attempts["time_left"]

    def _over(self, increment):
        """(scope, seconds left) of the counter over its limit that frees up last, or None."""
        over = []
        for scope, counter, value, limit in self.counters:
            failures, left = self._failures(counter, value, limit, increment)
            if failures > limit if increment else failures >= limit:
                over.append((left, scope))
        return max(over) if over else None

    def begin(self):
        """Before the password is checked; raises Throttled while locked."""
        over = self._over(increment=False)
        if over is None:
            over = self._over(increment=True)  # parallel attempts may have filled it meanwhile
            if over is not None:
                self.clear()
        if over is not None:
            left, scope = over
            refused(self.request, self.action, scope, f" (account {self.account!r})", left)
            raise Throttled(scope, left)

    def clear(self):
        """The attempt was not a failed guess (the right password, or refused unchecked)."""
        for _, counter, value, limit in self.counters:
            _count(f"login.{counter}.cleared", value, f"{limit}/{self.rate_minutes}m", True)


class ThrottledLoginMixin:
    """For an AuthenticationForm: refuses while locked (the form's error says why and until when;
    ``form.throttled`` holds the refusal for the view's 429) and counts failed passwords."""
    throttle_action = "login"
    throttled = None

    def clean(self):
        username, password = self.cleaned_data.get("username"), self.cleaned_data.get("password")
        if not username or not password:  # nothing is checked, so nothing to count
            return super().clean()
        attempt = LoginAttempt(self.request, username, self.throttle_action)
        try:
            attempt.begin()
        except Throttled as exc:
            self.throttled = exc
            raise ValidationError(str(exc), code="throttled") from None
        try:
            cleaned = super().clean()
        except ValidationError:
            if self.get_user() is not None:  # the right password, refused for another reason (not staff)
                attempt.clear()
            raise
        except BaseException:  # the password was never checked (the database is down): not a failure
            attempt.clear()
            raise
        attempt.clear()
        return cleaned


def with_retry_after(response, form):
    """429 and Retry-After on a sign-in page whose form was refused by the throttle."""
    throttled = getattr(form, "throttled", None)
    if throttled is not None:
        response.status_code = 429
        response["Retry-After"] = str(throttled.retry_after)
    return response


def signup_refusal(request, increment):
    """Throttled when the client's address has made SMOLSITE_SIGNUPS_PER_HOUR accounts this hour:
    checked before the form (``increment=False``) and counted, atomically, just before an account
    is created (``increment=True``), so a burst of parallel sign-ups cannot all pass."""
    limit = settings.SMOLSITE_SIGNUPS_PER_HOUR
    if limit <= 0:
        return None
    usage = _count("signup.address", address_key(request), f"{limit}/h", increment)
    if usage["count"] > limit if increment else usage["count"] >= limit:
        refused(request, "signup", "address", "", usage["time_left"])
        return Throttled("signup", usage["time_left"])
    return None
