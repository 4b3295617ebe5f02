"""Download a GGUF file for people to run: the only code here that fetches weights, and only
when a person asks for it."""
import json
import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from inference.gguf_info import GGUFError, read_gguf_info


class Command(BaseCommand):
    help = "Download a GGUF model file into SMOLSITE_VAR_DIR/models, check it, and print its configuration."

    def add_arguments(self, parser):
        parser.add_argument("url", help="http(s) URL of a .gguf file")
        parser.add_argument("--name", help="model name for SMOLSITE_MODELS (default: the file name)")
        parser.add_argument("--dest", help="folder to save into (default: var/models)")
        parser.add_argument("--force", action="store_true", help="overwrite an existing file")

    def handle(self, url, name=None, dest=None, force=False, **options):
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https"):
            raise CommandError(f"only http(s) URLs can be downloaded, not {url!r}")
        filename = os.path.basename(parsed.path) or "model.gguf"
        if not filename.endswith(".gguf"):
            raise CommandError(f"{filename!r} does not look like a GGUF file (expected a name ending in .gguf)")
        folder = Path(dest) if dest else Path(settings.VAR_DIR) / "models"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / filename
        if target.exists() and not force:
            raise CommandError(f"{target} exists already (use --force to replace it)")
        partial = target.with_suffix(".gguf.part")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                expected = response.headers.get("Content-Length")
                shutil.copyfileobj(response, out, length=1 << 20)
            if expected is not None and partial.stat().st_size != int(expected):
                raise CommandError(f"download incomplete: got {partial.stat().st_size} of {expected} bytes")
            info = read_gguf_info(str(partial))
        except GGUFError as exc:
            partial.unlink(missing_ok=True)
            raise CommandError(f"the downloaded file is not a usable GGUF model: {exc}") from None
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise CommandError(f"download failed: {exc}") from None
        except CommandError:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(target)
        name = name or filename[: -len(".gguf")].lower()
        config = {name: {"path": str(target.resolve()), "n_ctx": min(int(info.context_length or 4096), 8192),
                         "threads": 2, "device": "cpu"}}
        self.stdout.write(f"saved {target} ({info.architecture}, {target.stat().st_size:,} bytes)")
        self.stdout.write("add it to SMOLSITE_MODELS, for example:")
        self.stdout.write("SMOLSITE_MODELS='" + json.dumps(config) + "'")
