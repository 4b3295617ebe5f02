"""python manage.py create_api_key USERNAME [--name NAME] [--expires-days N]: prints the new
key, alone on one line, for scripts."""
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from api.models import ApiKey


class Command(BaseCommand):
    help = "Create an API key for a user and print it (only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="command line")
        parser.add_argument("--expires-days", type=int, default=None)

    def handle(self, username, name, expires_days, **options):
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: username})
        except User.DoesNotExist:
            raise CommandError(f"no user named {username!r}") from None
        if expires_days is not None and expires_days < 1:
            raise CommandError("--expires-days must be at least 1")
        expires = timezone.now() + timedelta(days=expires_days) if expires_days else None
        _, raw = ApiKey.create_for(user, name, expires_at=expires)
        self.stdout.write(raw)
