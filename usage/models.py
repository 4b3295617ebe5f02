"""The usage ledger (one row per finished generation, whatever started it) and the quotas
admins set per user and for the whole site."""
from django.conf import settings
from django.db import models
from django.utils import timezone


class Source(models.TextChoices):
    CHAT = "chat"
    API = "api"
    BATCH = "batch"


class Limits(models.Model):
    """The four limits; empty means "no limit" on the site default and "the site default" on a user."""

    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="generations started per minute (chat and API together)")
    tokens_per_day = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="prompt + completion tokens per calendar day (UTC)")
    tokens_per_month = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="prompt + completion tokens per calendar month (UTC)")
    concurrent_generations = models.PositiveIntegerField(
        null=True, blank=True, help_text="answers generating or queued at once")

    FIELDS = ("requests_per_minute", "tokens_per_day", "tokens_per_month", "concurrent_generations")

    class Meta:
        abstract = True


# The site default until an admin saves one (Usage > site default quota): a fresh install is not
# unlimited. Generous for one person (the chat page's own limits are tighter), but one key or
# script cannot take every device-worker thread or run the machine all day.
DEFAULTS = {"requests_per_minute": 600, "tokens_per_day": 1_000_000, "tokens_per_month": 10_000_000,
            "concurrent_generations": 16}


class SiteQuota(Limits):
    """The default for every user without a limit of their own (a single row; DEFAULTS until
    an admin saves it, and empty fields in it mean no limit)."""

    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, default=DEFAULTS["requests_per_minute"],
        help_text="generations started per minute (chat and API together); empty: no limit")
    tokens_per_day = models.PositiveBigIntegerField(
        null=True, blank=True, default=DEFAULTS["tokens_per_day"],
        help_text="prompt + completion tokens per calendar day (UTC); empty: no limit")
    tokens_per_month = models.PositiveBigIntegerField(
        null=True, blank=True, default=DEFAULTS["tokens_per_month"],
        help_text="prompt + completion tokens per calendar month (UTC); empty: no limit")
    concurrent_generations = models.PositiveIntegerField(
        null=True, blank=True, default=DEFAULTS["concurrent_generations"],
        help_text="answers generating or queued at once; empty: no limit")

    class Meta:
        verbose_name = verbose_name_plural = "site default quota"

    def __str__(self):
        return "Site default"

    def save(self, *args, **kwargs):
        self.pk = 1
        super().save(*args, **kwargs)

    @classmethod
    def current(cls):
        return cls.objects.filter(pk=1).first() or cls(pk=1)


class UserQuota(Limits):
    """A user's own limits; also the row their quota checks lock, so two requests racing for
    the last tokens are decided one after the other."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quota")

    class Meta:
        verbose_name = "user quota"

    def __str__(self):
        return f"Quota of {self.user}"


class UsageRecord(models.Model):
    """One finished generation (done, stopped or failed after using tokens). Written by the job
    store when the generation ends; kept when its conversation is deleted."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage_records")
    api_key = models.ForeignKey("api.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    key_name = models.CharField(max_length=100, blank=True, default="")
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.CHAT)
    model = models.CharField(max_length=100)
    message = models.OneToOneField("chat.Message", null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="usage_record")
    status = models.CharField(max_length=16, blank=True, default="")
    prompt_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    # Tool calls the generation asked for (a chat's run by the server, an API client's by it).
    tool_calls = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "created_at"]), models.Index(fields=["created_at"])]

    def __str__(self):
        return f"{self.user} {self.model} {self.total_tokens} tokens"
