"""A device worker in a process of its own, started and watched by the web process
(inference.supervisor) in the embedded mode: a native crash in llama.cpp (SIGSEGV, SIGILL, an
OOM kill) then ends this process, not the site.

    python -m inference.worker_process --device cpu --fd N

It runs the same ``run_job`` as every other worker; only the transport differs. Over the
socket ``N`` (pickled tuples through multiprocessing.connection) it receives ``("job", id)`` and
``("stop", id)``, and sends ``("ready", info)`` once its models are loaded and ``("finished", id)``
after each job; its channel layer and cache use the same socket (inference.parent_link). When the
web process goes away the socket closes and this process exits.
"""
import argparse
import logging
import os
import signal
import sys
import threading

logger = logging.getLogger("inference.worker_process")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m inference.worker_process")
    parser.add_argument("--device", required=True)
    parser.add_argument("--fd", type=int, required=True, help="the socket to the web process")
    args = parser.parse_args(argv)
    # Ctrl+C in a terminal reaches the whole process group: the web process decides when this
    # one ends (it closes the socket), so that a shutdown does not look like a crash to it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    from multiprocessing.connection import Connection

    conn = Connection(args.fd)
    # The web process sets these too; here they cannot be forgotten: this process's events and
    # cache go over the pipe, and it must never start workers of its own.
    os.environ["SMOLSITE_WORKER_CHILD"] = "1"
    os.environ["SMOLSITE_EMBEDDED_WORKER"] = "0"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smolsite.settings")
    import django

    django.setup()

    from . import parent_link
    from .embedded import job_pool, run_embedded_job
    from .registry import get_registry
    from .stop import request_stop
    from .workers import EngineReporter, make_worker_id
    from .worker_state import set_process_worker_id

    parent_link.attach(conn)
    worker_id = make_worker_id(args.device) + ":process"
    set_process_worker_id(worker_id)

    def job(job_id):
        run_embedded_job(job_id, worker_id)
        try:
            parent_link.send(("finished", job_id))
        except OSError:
            pass  # the web process is gone; this process is exiting

    pool = job_pool(args.device)

    def read():
        # Started before the models load: a plugin may use the cache (answered over the pipe) then.
        status = 0
        try:
            while True:
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    logger.info("device worker %s: the web process went away; exiting", worker_id)
                    break
                kind = message[0]
                if kind == "job":
                    pool.submit(job, message[1])
                elif kind == "stop":
                    request_stop(message[1])
                elif kind == "reply":
                    parent_link.answered(*message[1:])
        except Exception:  # without its reader this process is of no use: the web process replaces it
            logger.exception("device worker %s cannot read its socket any more; exiting", worker_id)
            status = 1
        finally:
            parent_link.fail_all_calls("the web process went away")
            sys.stdout.flush()
            sys.stderr.flush()
            # Not a clean interpreter exit: that would wait for generations nobody can receive any more.
            os._exit(status)

    threading.Thread(target=read, name="smolsite-parent-link", daemon=True).start()
    error = ""
    try:
        get_registry().load_device(args.device, keep_going=True)
    except Exception as exc:
        # Keep serving the queue: each job then ends as an error that says why (the web process logs it).
        error = str(exc)
    models = get_registry().loaded_models()
    EngineReporter(worker_id, get_registry().stats, get_registry().forget_users).start()
    parent_link.send(("ready", {"worker_id": worker_id, "pid": os.getpid(), "models": models, "error": error}))
    threading.Event().wait()  # the reader ends this process


if __name__ == "__main__":
    main()
