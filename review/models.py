"""The audit trail of staff reading or exporting users' conversations in the admin."""
from django.conf import settings
from django.db import models
from django.utils import timezone


class AuditRecord(models.Model):
    class Action(models.TextChoices):
        VIEW = "view"  # a transcript page shown
        EXPORT = "export"  # conversations exported by the admin action
        SEARCH = "search"  # changelists searched over message text (detail: the query)

    # Kept when the staff account or the conversation is deleted: hence a nullable user with the
    # name copied, and the conversation's id and owner as plain values rather than a foreign key.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    username = models.CharField(max_length=150)
    conversation_id = models.PositiveBigIntegerField(null=True, blank=True, db_index=True)
    owner_username = models.CharField(max_length=150, blank=True, default="")
    action = models.CharField(max_length=8, choices=Action.choices)
    reason = models.TextField(blank=True, default="")
    with_text = models.BooleanField(default=False, help_text="message text was shown or exported")
    detail = models.CharField(max_length=300, blank=True, default="", help_text="export format or search query")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("view_transcript", "Can read conversation transcripts and export conversations")]

    def __str__(self):
        target = f"conversation {self.conversation_id}" if self.conversation_id else "conversations"
        return f"{self.username} {self.action} {target} at {self.created_at:%Y-%m-%d %H:%M:%S}"
