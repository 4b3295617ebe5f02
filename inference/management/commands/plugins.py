import json

from django.core.management.base import BaseCommand

from inference.plugins import get_plugins


class Command(BaseCommand):
    help = "List the installed smolsite plugins as JSON: name, module, distribution, version, hooks."

    def handle(self, *args, **options):
        self.stdout.write(json.dumps(get_plugins(), indent=2))
