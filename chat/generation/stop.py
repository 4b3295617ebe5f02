"""Stopping a generation: the worker's stop flag (it ends the answer at its next step, keeping
its text), and an answer no worker has claimed yet ended now, stopped, on every tab."""
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async

from inference import dispatch

from . import rows
from .announce import tell_ended, tell_ended_here


async def stop(message_id):
    """``stop_from_thread`` from the web server's loop."""
    await sync_to_async(dispatch.stop, thread_sensitive=False)(str(message_id))
    if await database_sync_to_async(rows.cancel_pending)(message_id):
        await tell_ended_here(message_id, "stopped")


def stop_from_thread(message_id):
    dispatch.stop(str(message_id))
    if rows.cancel_pending(message_id):
        tell_ended(message_id, "stopped")
