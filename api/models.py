"""Per-user API keys. Only a SHA-256 of each key is stored: the key itself is shown once."""
import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

PREFIX = "sk-smol-"
LAST_USED_RESOLUTION = 60  # seconds: last_used_at is written at most this often per key


def hash_key(raw):
    return hashlib.sha256(raw.encode("utf-8", errors="surrogatepass")).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def usable(self, now=None):
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True, user__is_active=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now))


class ApiKey(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    # The first characters of the key, to tell keys apart in lists (never enough to use it).
    prefix = models.CharField(max_length=20)
    hashed_key = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API key"

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def create_for(cls, user, name, expires_at=None):
        """A new key for ``user``: returns (row, raw key); the raw key is not kept anywhere."""
        raw = PREFIX + secrets.token_urlsafe(32)
        key = cls.objects.create(user=user, name=(name or "API key").strip()[:100] or "API key",
                                 prefix=raw[:len(PREFIX) + 4], hashed_key=hash_key(raw), expires_at=expires_at)
        return key, raw

    @classmethod
    def authenticate(cls, raw):
        """The usable key ``raw`` names (not revoked, not expired, its user active), or None."""
        if not raw or len(raw) > 200:
            return None
        key = cls.objects.usable().select_related("user").filter(hashed_key=hash_key(raw)).first()
        if key is not None:
            now = timezone.now()
            if key.last_used_at is None or (now - key.last_used_at).total_seconds() >= LAST_USED_RESOLUTION:
                cls.objects.filter(pk=key.pk).update(last_used_at=now)
                key.last_used_at = now
        return key

    @property
    def is_expired(self):
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_revoked(self):
        return self.revoked_at is not None

    def revoke(self):
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            ApiKey.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=self.revoked_at)
