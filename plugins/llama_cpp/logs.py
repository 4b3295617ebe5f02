"""Route llama.cpp's log lines to Python logging and keep the recent ones, so a failed load can
say why (llama-cpp-python itself only raises "Failed to load model from file")."""
import collections
import ctypes
import logging
import threading

import llama_cpp

logger = logging.getLogger("llama_cpp")
_recent = collections.deque(maxlen=200)
_lock = threading.Lock()
_installed = False


@llama_cpp.llama_log_callback
def _callback(level, text, user_data):
    line = text.decode("utf-8", errors="replace") if text else ""
    with _lock:
        _recent.append(line)
    if line.strip():
        logger.debug(line.rstrip())


def install():
    global _installed
    if not _installed:
        llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
        _installed = True


def mark():
    with _lock:
        return len(_recent), list(_recent)


def since(snapshot):
    """Log text written since ``snapshot`` (best effort: the buffer is bounded)."""
    count, before = snapshot
    with _lock:
        now = list(_recent)
    overlap = 0
    for i in range(min(len(before), len(now)), 0, -1):
        if before[-i:] == now[:i]:
            overlap = i
            break
    return "".join(now[overlap:] if before else now)
