"""``python manage.py batch run FILE --user NAME [--model NAME] --out OUT.jsonl``: a batch through
the same path as the API and the Batches page (validation, background-priority lines, quotas,
the ledger), driven by this process with a progress bar. Ctrl-C cancels cleanly: running lines
stop, finished ones are kept and written to OUT. A second Ctrl-C leaves at once.

Embedded (no REDIS_URL) this process runs a device worker of its own (a thread, as the tests do),
since jobs cannot reach another process's embedded worker. Stop the served site first, or use
Redis: the served site's reaper does not see this process's worker and would interrupt its
answers (they would be re-run, up to SMOLSITE_BATCH_ATTEMPTS times). Scaled out (REDIS_URL) the
lines go to the Celery device workers, which must be running.
"""
import json
import os
import signal
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from batches import service
from batches.models import Batch
from batches.validation import BatchInvalid, csv_to_jsonl
from inference.embedded import get_worker
from inference.model_configs import get_model
from inference.workers import alive_workers


def _with_model(data, model):
    lines = []
    for raw in data.decode("utf-8-sig").splitlines():
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
            if isinstance(item, dict) and isinstance(item.get("body"), dict):
                item["body"]["model"] = model
                raw = json.dumps(item, ensure_ascii=False)
        except ValueError:
            pass  # validation reports it with its line number
        lines.append(raw)
    return ("\n".join(lines) + "\n").encode()


class Command(BaseCommand):
    help = "Run a batch file (OpenAI Batch JSONL, or CSV with a prompt column) and write its results."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        run = sub.add_parser("run", help="run FILE and write the results to --out")
        run.add_argument("file")
        run.add_argument("--user", required=True, help="whose batch it is (quotas, ledger, the Batches page)")
        run.add_argument("--model", help="the model for every line (required for CSV)")
        run.add_argument("--out", required=True, help="results JSONL; failed lines go to OUT's .errors.jsonl")
        run.add_argument("--max-tokens", type=int, default=None, help="CSV: max tokens per answer")
        run.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **options):
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"No user named {options['user']!r}.")
        path = Path(options["file"])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc}") from None
        try:
            if path.suffix.lower() == ".csv":
                if not options["model"]:
                    raise CommandError("A CSV needs --model.")
                data = csv_to_jsonl(data, options["model"], options["max_tokens"])
            elif options["model"]:
                data = _with_model(data, options["model"])
        except BatchInvalid as exc:
            self._errors(exc.errors)
            sys.exit(1)
        driver = service.driver_name()
        batch = service.create_batch(user, service.store_file(user, path.name, data), driver=driver)
        if batch.status == Batch.Status.FAILED:
            self._errors(batch.errors or [])
            sys.exit(1)
        self._ensure_worker(batch)
        batch = self._drive(batch, driver, not options["no_progress"])
        out = Path(options["out"])
        out.write_bytes(bytes(batch.output_file.data) if batch.output_file else b"")
        errors = out.with_suffix(".errors.jsonl")
        if batch.error_file:
            errors.write_bytes(bytes(batch.error_file.data))
        self.stderr.write(f"{batch.id}: {batch.status}, {batch.completed} completed, {batch.failed} failed of "
                          f"{batch.total}; results in {out}" + (f", errors in {errors}" if batch.error_file else ""))
        if batch.status != Batch.Status.COMPLETED:
            sys.exit(130 if batch.status == Batch.Status.CANCELLED else 1)

    def _errors(self, errors):
        for e in errors:
            where = f"line {e['line']}: " if e.get("line") else ""
            self.stderr.write(f"{where}{e['code']}: {e['message']}")
        self.stderr.write(f"The batch failed validation ({len(errors)} error(s)); nothing ran.")

    def _ensure_worker(self, batch):
        if settings.REDIS_URL:
            names = set(batch.models_used.split(", "))
            served = {m for w in alive_workers() for m in w.get("models") or []}
            if not names <= served:
                self.stderr.write(f"Warning: no live device worker serves {', '.join(sorted(names - served))}; "
                                  "lines wait until one starts (make worker DEVICE=...).")
            return
        for device in {get_model(name).device for name in batch.models_used.split(", ")}:
            try:
                pid = int((settings.VAR_DIR / f"worker-{device}.pid").read_text())
                os.kill(pid, 0)
            except (OSError, ValueError):
                continue
            self.stderr.write(f"Warning: the site's {device} worker (pid {pid}) is running: its reaper cannot see this "
                              "command's worker and may cut its answers (they are then run again). Stop the site, or "
                              "use REDIS_URL.")
        for name in batch.models_used.split(", "):
            worker = get_worker(get_model(name).device)  # a thread worker of this process
            worker.ready.wait(300)

    def _drive(self, batch, driver, progress):
        stopping = {"asked": False}

        def on_sigint(signum, frame):
            if stopping["asked"]:
                raise KeyboardInterrupt
            stopping["asked"] = True

        previous = signal.signal(signal.SIGINT, on_sigint)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=batch.total, unit="line", desc=batch.id[:18], file=self.stderr._out)
        cancelled, shown = False, 0.0
        try:
            while batch.is_active:
                if stopping["asked"] and not cancelled:
                    cancelled = True
                    service.cancel(batch)
                    if bar:
                        bar.set_description("cancelling")
                service.advance(batch, driver)
                batch.refresh_from_db()
                if bar and (bar.n != batch.done_count or time.monotonic() - shown > 2):
                    shown = time.monotonic()
                    bar.n = batch.done_count
                    elapsed = max(1e-6, time.time() - batch.in_progress_at.timestamp())
                    bar.set_postfix(failed=batch.failed, tok_s=f"{batch.completion_tokens / elapsed:.1f}",
                                    refresh=False)
                    bar.refresh()
                if batch.is_active:
                    time.sleep(min(0.5, settings.SMOLSITE_BATCH_TICK_SECONDS))
        finally:
            signal.signal(signal.SIGINT, previous)
            if bar:
                bar.close()
        return batch
