"""This process's identity as a device worker (set when a worker starts)."""
import threading

_local = threading.local()
_process_worker_id = ""


def set_process_worker_id(worker_id):
    global _process_worker_id
    _process_worker_id = worker_id


def set_thread_worker_id(worker_id):
    _local.worker_id = worker_id


def current_worker_id():
    return getattr(_local, "worker_id", "") or _process_worker_id
