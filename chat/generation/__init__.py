"""One door for a generation (an assistant Message a device worker answers), for the chat socket
(chat.consumers), the tool loop (chat.agent), the reaper (chat.reaper), the API and Responses
(api.runner, api.responses) and batches (batches.service):

- ``start`` (``start_from_thread``; queue.py): hand it to its model's device, or end it as an
  error every tab shows with Retry when it cannot be queued;
- ``stop`` (``stop_from_thread``; stop.py): the worker's stop flag, and an answer no worker took
  yet ended at once, on every tab;
- ``Follower`` (follow.py): follow its numbered events, gaps and silences filled from the row.

rows.py is what the door writes on the row; announce.py tells the conversation's channel-layer
group.
"""
from .follow import Follower
from .queue import could_not_queue, failed_to_queue, preferred_worker, start, start_from_thread
from .stop import stop, stop_from_thread

__all__ = ["Follower", "could_not_queue", "failed_to_queue", "preferred_worker", "start", "start_from_thread", "stop",
           "stop_from_thread"]
