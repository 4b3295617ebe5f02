"""Celery device-worker start-up: load this device's models once, before any task, or die loudly."""
import logging
import os
import sys

from celery.signals import worker_init, worker_process_init, worker_shutdown

from .devices import available_devices
from .registry import get_registry
from .routing import direct_queue
from .workers import EngineReporter, Heartbeat, make_worker_id, plugin_devices
from .worker_state import set_process_worker_id

logger = logging.getLogger(__name__)
_heartbeat = None


def device():
    return os.environ.get("SMOLSITE_DEVICE", "cpu")


def start_worker_process():
    global _heartbeat
    if _heartbeat is not None:
        return
    dev = device()
    plugin = plugin_devices().get(dev)  # a plugin's device (hook register_devices): nothing to load
    try:
        if plugin is not None:
            if plugin.start is not None:
                plugin.start()
        elif dev not in available_devices():
            raise RuntimeError(f"this llama.cpp build cannot use device {dev!r} "
                               f"(available: {', '.join(available_devices())})")
        else:
            get_registry().load_device(dev)
    except Exception as exc:
        logger.critical("device worker %s cannot load its models: %s", dev, exc)
        print(f"smolsite: device worker {dev!r} cannot load its models: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(3)
    worker_id = make_worker_id(dev)
    set_process_worker_id(worker_id)
    if plugin is not None:
        _heartbeat = Heartbeat(worker_id, dev, plugin.serving,
                               lambda: {"queue": direct_queue(worker_id), **(plugin.details() if plugin.details else {})},
                               interval=plugin.beat_seconds).start()
    else:
        _heartbeat = Heartbeat(worker_id, dev, get_registry().loaded_models,
                               lambda: {"queue": direct_queue(worker_id), **get_registry().occupancy()}).start()
    EngineReporter(worker_id, get_registry().stats, get_registry().forget_users).start()
    logger.info("device worker %s ready with %s", worker_id, get_registry().loaded_models())


@worker_process_init.connect
def _on_child_start(**kwargs):  # prefork pool: each child holds the model
    start_worker_process()


@worker_init.connect
def _on_worker_init(sender=None, **kwargs):  # solo/threads pool: the main process holds it
    pool = getattr(sender, "pool_cls", "")
    pool_name = f"{getattr(pool, '__module__', '')}.{getattr(pool, '__name__', pool)}".lower()
    if "prefork" not in pool_name:
        start_worker_process()
        # Follow-ups of conversations this worker holds are routed to it (inference.routing).
        from .worker_state import current_worker_id

        sender.app.amqp.queues.select_add(direct_queue(current_worker_id()))


@worker_shutdown.connect
def _on_shutdown(**kwargs):
    if _heartbeat is not None:
        _heartbeat.stop()
