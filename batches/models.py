"""Batches in the shape of OpenAI's Batch API: an uploaded input file (JSONL, one chat completion request a
line), the batch, and one row per line that points at the chat Message answering it."""
import os
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone


def _id(prefix):
    return f"{prefix}{secrets.token_hex(12)}"


def file_id():
    return _id("file-")


def batch_id():
    return _id("batch_")


def file_expiry_days():
    """Days a stored file is kept unless its upload says otherwise (OpenAI keeps batch files 30
    days); 0 keeps files until deleted."""
    return float(getattr(settings, "SMOLSITE_FILE_EXPIRY_DAYS", os.environ.get("SMOLSITE_FILE_EXPIRY_DAYS", "30")) or 0)


def default_expiry():
    days = file_expiry_days()
    return timezone.now() + timedelta(days=days) if days > 0 else None


class BatchFile(models.Model):
    """An uploaded input file, or an output or error file a batch wrote (purpose batch_output).
    The retention pass deletes it (row and bytes) once ``expires_at`` has passed."""

    id = models.CharField(primary_key=True, max_length=40, default=file_id, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="batch_files")
    purpose = models.CharField(max_length=20, default="batch")
    filename = models.CharField(max_length=255)
    data = models.BinaryField()
    bytes = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True, default=default_expiry, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"])]

    def __str__(self):
        return f"{self.filename} ({self.id})"

    def as_api(self):
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": int(self.created_at.timestamp()),
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": int(self.expires_at.timestamp()) if self.expires_at else None,
                "status_details": None}


class Batch(models.Model):
    class Status(models.TextChoices):
        VALIDATING = "validating"
        FAILED = "failed"
        IN_PROGRESS = "in_progress"
        FINALIZING = "finalizing"
        COMPLETED = "completed"
        EXPIRED = "expired"
        CANCELLING = "cancelling"
        CANCELLED = "cancelled"

    ACTIVE = (Status.VALIDATING, Status.IN_PROGRESS, Status.FINALIZING, Status.CANCELLING)
    TIMESTAMPS = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")

    id = models.CharField(primary_key=True, max_length=40, default=batch_id, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="batches")
    api_key = models.ForeignKey("api.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    endpoint = models.CharField(max_length=64, default="/v1/chat/completions")
    completion_window = models.CharField(max_length=16, default="24h")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.VALIDATING)
    input_file = models.ForeignKey(BatchFile, null=True, on_delete=models.SET_NULL, related_name="+")
    output_file = models.ForeignKey(BatchFile, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    error_file = models.ForeignKey(BatchFile, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    metadata = models.JSONField(null=True, blank=True)
    # Validation errors: [{"code", "message", "param", "line"}] (the batch failed, nothing ran).
    errors = models.JSONField(null=True, blank=True)
    models_used = models.CharField(max_length=200, blank=True, default="")
    total = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    # Who advances it: "" the web process's driver; "cli:<host>:<pid>" a `manage.py batch run`
    # (the web driver adopts it when that process has not been seen for a while).
    driver = models.CharField(max_length=120, blank=True, default="")
    driver_seen = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "batches"
        indexes = [models.Index(fields=["owner", "-created_at"]), models.Index(fields=["status"])]

    def __str__(self):
        return self.id

    @property
    def is_active(self):
        return self.status in self.ACTIVE

    @property
    def done_count(self):
        return self.completed + self.failed

    @property
    def percent(self):
        return int(100 * self.done_count / self.total) if self.total else (100 if not self.is_active else 0)

    def as_api(self):
        def ts(value):
            return int(value.timestamp()) if value else None

        errors = None
        if self.errors:
            errors = {"object": "list", "data": self.errors}
        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": errors,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": ts(self.created_at), "expires_at": ts(self.expires_at),
            **{f"{name}_at": ts(getattr(self, f"{name}_at")) for name in self.TIMESTAMPS},
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }


class BatchLine(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        STARTING = "starting"  # claimed by a driver, its rows being made
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"  # never started: the batch was cancelled or expired

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="lines")
    index = models.PositiveIntegerField()  # 0-based line number in the input file
    custom_id = models.CharField(max_length=512)
    body = models.JSONField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    # The assistant Message ids answering it (one per choice, n of them) in its current attempt.
    message_ids = models.JSONField(default=list, blank=True)
    conversation_id = models.PositiveBigIntegerField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    # Written once, when the line ends: the output file's "response" or "error".
    response = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["batch", "index"]
        constraints = [models.UniqueConstraint(fields=["batch", "index"], name="batch_line_index")]
        indexes = [models.Index(fields=["batch", "status"])]

    def __str__(self):
        return f"{self.batch_id}:{self.index}"

    def output_record(self):
        return {"id": f"batch_req_{self.batch_id.split('_', 1)[1]}_{self.index}", "custom_id": self.custom_id,
                "response": self.response, "error": self.error}
