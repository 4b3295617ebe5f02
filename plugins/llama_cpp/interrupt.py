"""Ending the ``llama_decode`` under way early, so a person who arrives while a long prompt
prefills alone does not wait for the whole step (512 prompt tokens: over a second on 2 cores).

llama.cpp asks an abort callback after every node of the step's graph, from its compute thread,
and on an abort drops the step's KV entries and returns 2. A Python callback would take the GIL
hundreds of times a step, and wait for it behind the web threads, so the callback is a C
function instead: libc's ``strlen`` over a two-byte buffer answers "is the flag raised" (b"x"
has length 1, the empty string 0; a ``bool`` return is the low byte of the same register on
x86-64 and AArch64). Raising the flag is one byte written from any thread.
"""
import ctypes
import ctypes.util
import logging

import llama_cpp

logger = logging.getLogger(__name__)

ABORTED = 2  # llama_decode's return code for a step ended by the callback


def _strlen():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        return ctypes.cast(libc.strlen, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


class StepInterrupt:
    """The flag for one context. ``supported`` is False where no C library was found: steps
    then always run to their end, as before."""

    def __init__(self, ctx):
        self._flag = ctypes.create_string_buffer(2)
        address = _strlen()
        self.supported = address is not None
        if not self.supported:
            logger.warning("no C library found: long prompt steps cannot be interrupted")
            return
        # Kept on self: llama.cpp holds only the raw pointers.
        self._callback = llama_cpp.ggml_abort_callback(address)
        llama_cpp.llama_set_abort_callback(ctx, self._callback, ctypes.cast(self._flag, ctypes.c_void_p))

    def raise_(self):
        self._flag[0] = b"x"

    def clear(self):
        self._flag[0] = b"\0"

