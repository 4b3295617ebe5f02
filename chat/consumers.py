"""The chat websocket: actions in, numbered events out (in the publisher's flushes). No inference happens here;
generations are handed to the model's device worker and stream back through the group."""
import asyncio
import json
import logging

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.exceptions import DenyConnection, StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError
from django.template.loader import render_to_string

from inference.publish import remember_server_loop

from . import actions, agent, generation, limits
from .generation.follow import Follower, has_ended
from .models import Conversation, Message, conversation_group
from .rendering import message_context, thread_context
from .socket_auth import NOT_ALLOWED, SIGNED_OUT, TOO_MANY, SessionRecheckMixin, contains_nul

logger = logging.getLogger(__name__)

GENERATING_ACTIONS = ("send", "regenerate", "edit")


def off_loop(fn):
    """Cache round trips (Redis, scaled out) and rendering run off the event loop, but not on the
    one thread that all sockets' database work shares (database_sync_to_async)."""
    return sync_to_async(fn, thread_sensitive=False)


class ChatConsumer(SessionRecheckMixin, AsyncWebsocketConsumer):
    async def connect(self):
        self.user = self.scope.get("user")
        self.conversation_id = int(self.scope["url_route"]["kwargs"]["conversation_id"])
        self.follower = SocketFollower(self)
        if not self.user or not self.user.is_authenticated:
            return await self.refuse(SIGNED_OUT)
        await self.remember_auth()
        if not await self._owns():
            return await self.refuse(NOT_ALLOWED)
        try:
            await off_loop(limits.open_socket)(self.user.pk, self.channel_name)
        except limits.LimitExceeded as exc:
            return await self.refuse(TOO_MANY, str(exc))
        self.socket_counted = True
        remember_server_loop(asyncio.get_running_loop())
        self.group = conversation_group(self.conversation_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        self.start_auth_watch()
        active = await database_sync_to_async(actions.active_message)(self.conversation_id)
        if active is not None:
            await self._send_snapshot(active.pk)

    async def disconnect(self, code):
        self.stop_auth_watch()
        if getattr(self, "socket_counted", False):
            self.socket_counted = False
            await off_loop(limits.close_socket)(self.user.pk, self.channel_name)
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def dispatch(self, message):
        # A group event that cannot be rendered (say, a database error under load) must not close
        # the socket with 1011 either: the page stays connected and a reload catches up.
        try:
            await super().dispatch(message)
        except (StopConsumer, DenyConnection):
            raise
        except Exception:
            if message["type"].startswith("websocket."):
                raise
            logger.exception("chat event %r failed in conversation %s", message["type"], self.conversation_id)
            await self.error("The server could not update this page: reload it to catch up.")

    @database_sync_to_async
    def _owns(self):
        return Conversation.objects.filter(pk=self.conversation_id, owner=self.user).exists()

    async def send_json(self, data):
        await self.send(text_data=json.dumps(data))

    async def error(self, text, **extra):
        await self.send_json({"type": "error", "error": text, **extra})

    # ---- client -> server -------------------------------------------------------------
    async def receive(self, text_data=None, bytes_data=None):
        if bytes_data is not None or text_data is None:
            return await self.error("Binary frames are not accepted.")
        if len(text_data.encode()) > settings.SMOLSITE_MAX_FRAME_BYTES:
            return await self.error("That frame is too large.")
        try:
            if not await self.still_allowed():  # signed out, or the chat deleted: closes the socket
                return
        except DatabaseError:
            logger.exception("could not re-check a chat socket's session")
            return await self.error("The database is not answering: try again in a moment.")
        try:
            frame = json.loads(text_data)
        except (ValueError, RecursionError):  # RecursionError: "[" * 60000
            return await self.error("That frame is not valid JSON.")
        if not isinstance(frame, dict):
            return await self.error("A frame must be a JSON object.")
        if contains_nul(frame):
            return await self.error("Text cannot contain NUL characters (\\u0000).", action=frame.get("action"))
        action = frame.get("action")
        if not isinstance(action, str):  # {"action": {}} is unhashable: no dict lookup for it
            return await self.error(f"Unknown action {action!r:.100}.")
        handler = {
            "send": self.do_send,
            "regenerate": self.do_regenerate,
            "edit": self.do_edit,
            "stop": self.do_stop,
            "resume": self.do_resume,
            "approve": self.do_approve,
            "deny": self.do_deny,
        }.get(action)
        if handler is None:
            return await self.error(f"Unknown action {action!r:.100}.")
        try:
            if action in GENERATING_ACTIONS:
                await off_loop(limits.check_action_rate)(self.user.pk)
            elif action == "resume":
                await off_loop(limits.check_resume_rate)(self.user.pk)
        except limits.LimitExceeded as exc:
            return await self.error(str(exc), action=action, retry_after=exc.retry_after)
        try:
            await handler(frame)
        except (actions.ActionError, agent.DecisionError) as exc:
            await self.error(str(exc), action=action)
        except (TypeError, ValueError, KeyError, OverflowError):  # OverflowError: int(1e400)
            await self.error(f"Malformed {action!r} frame.", action=action)
        # Anything else would close the socket with 1011 and leave the page dead: report it and
        # keep serving. The actions are atomic, so a failure in one has written nothing.
        except DatabaseError:
            logger.exception("chat action %r failed in conversation %s", action, self.conversation_id)
            await self.error(f"The database could not complete that {action!r}: try again in a moment.",
                             action=action)
        except Exception:
            logger.exception("chat action %r failed in conversation %s", action, self.conversation_id)
            await self.error(f"Something went wrong on the server while handling {action!r}. "
                             "Try again in a moment.", action=action)

    async def do_send(self, frame):
        reply = await database_sync_to_async(actions.send)(self.conversation_id, frame.get("content"),
                                                           frame.get("time_zone"))
        await self._started(reply, frame["action"])

    async def do_regenerate(self, frame):
        message_id = frame.get("message")
        reply = await database_sync_to_async(actions.regenerate)(
            self.conversation_id, int(message_id) if message_id not in (None, "") else None)
        await self._started(reply, frame["action"])

    async def do_edit(self, frame):
        reply = await database_sync_to_async(actions.edit)(
            self.conversation_id, int(frame["message"]), frame.get("content"))
        await self._started(reply, frame["action"])

    async def do_stop(self, frame):
        active = await database_sync_to_async(actions.active_message)(self.conversation_id)
        if active is None:
            # Between answers of a tool loop: a tool running, or calls waiting for approval.
            changed = await database_sync_to_async(actions.stop_tools)(self.conversation_id)
            if changed is None:
                return await self.error("Nothing is being generated.", action="stop")
            for message_id in changed:
                await self.channel_layer.group_send(self.group, {"type": "tool.update", "message": message_id})
            return
        await generation.stop(active.pk)

    async def do_approve(self, frame):
        await self._decide(frame, True)

    async def do_deny(self, frame):
        await self._decide(frame, False)

    async def _decide(self, frame, approve):
        call = frame["call"]
        if isinstance(call, bool) or not isinstance(call, (int, str)):
            raise TypeError("call")
        call = int(call)
        if not 0 < call < 2 ** 63:
            raise agent.DecisionError("No such tool call in this chat.")
        message_id, ready = await database_sync_to_async(agent.decide)(self.conversation_id, call, approve)
        await self.channel_layer.group_send(self.group, {"type": "tool.update", "message": message_id})
        if ready:  # every call of that answer is decided: run the approved ones, then go on
            agent.advance_in_background(message_id)

    async def do_resume(self, frame):
        await self._send_snapshot(int(frame["message"]))

    async def _started(self, reply, action):
        self.follower.seq[reply.pk] = 0
        try:
            # Every tab redraws the branch: the new turn (or new branch) is on all of them.
            await self.channel_layer.group_send(self.group, {"type": "thread.changed", "message": reply.pk})
            affinity = await database_sync_to_async(generation.preferred_worker)(self.conversation_id)
        except Exception as exc:
            logger.exception("could not enqueue message %s", reply.pk)
            error = await generation.failed_to_queue(reply.pk, generation.could_not_queue(exc))
        else:
            error = await generation.start(reply.pk, reply.model_name, affinity)
        if error:
            await self.error(error, action=action)

    # ---- group -> client --------------------------------------------------------------
    async def tool_update(self, event):
        """A tool call of an answer changed (ran, ended, was decided or stopped): redraw the answer
        with its cards."""
        if not await self.allowed_for_events():
            return
        message_id = int(event["message"])
        context = await self._message_context(message_id)
        if context is not None:
            html = await off_loop(render_to_string)("chat/_message.html", context)
            await self.send_json({"type": "tools", "message": message_id, "html": html})

    async def thread_changed(self, event):
        if not await self.allowed_for_events():
            return
        html, title = await self._thread()
        self.follower.seq.setdefault(event["message"], 0)
        self.follower.hear(event["message"])
        await self.send_json({"type": "thread", "html": html, "title": title, "active": event["message"]})

    async def gen_events(self, event):
        if not await self.allowed_for_events():
            return
        await self.follower.on_events(int(event["message"]), event["events"])

    async def _send_snapshot(self, message_id):
        if not await self.follower.show_saved(message_id):
            await self.error("No such message.", action="resume")

    @database_sync_to_async
    def _saved(self, message_ids):
        saved = Message.objects.filter(pk__in=message_ids, conversation_id=self.conversation_id)
        return {row["id"]: row for row in saved.values("id", "stream_seq", "status", "content", "reasoning")}

    async def on_watch_tick(self):
        """Events travel over the channel layer, which can drop some (Redis restarted, a
        subscription lost for a moment): an answer this tab has heard nothing of for a while is
        re-read from the database and brought up to date, and ended here if it has ended."""
        await self.follower.check(self.follower.silent(settings.SMOLSITE_WS_STALL_SECONDS))

    async def _send_final(self, message_id):
        context = await self._message_context(message_id)
        if context is not None:
            html = await off_loop(render_to_string)("chat/_message.html", context)
            await self.send_json({"type": "final", "message": message_id, "html": html})

    # The database reads happen on the shared database thread; the Markdown of whole answers is
    # rendered after, on another (chat.rendering defers it to the template).
    @database_sync_to_async
    def _message_context(self, message_id):
        m = Message.objects.filter(pk=message_id, conversation_id=self.conversation_id).first()
        return None if m is None else message_context(m)

    async def _thread(self):
        context, title = await self._thread_context()
        return await off_loop(render_to_string)("chat/_thread.html", context), title

    @database_sync_to_async
    def _thread_context(self):
        conv = Conversation.objects.get(pk=self.conversation_id)
        return thread_context(conv), conv.title


class SocketFollower(Follower):
    """The answers a chat socket shows (chat.generation.follow): events go to the page as they
    come, a saved row as a "snapshot" frame, an ended answer as its "final" HTML."""

    resync_in_background = True  # the socket stays free for Stop while a gap is filled

    def __init__(self, consumer):
        super().__init__()
        self.consumer = consumer

    async def read_saved(self, message_ids):
        return await self.consumer._saved(message_ids)

    async def deliver(self, message_id, events):
        await self.consumer.send_json({"type": "events", "message": message_id, "events": events})
        if any(e["kind"] == "done" for e in events):
            await self.consumer._send_final(message_id)

    async def apply_saved(self, message_id, row):
        await self.consumer.send_json({"type": "snapshot", "message": message_id, "seq": row["stream_seq"],
                                       "status": row["status"], "content": row["content"],
                                       "reasoning": row["reasoning"]})
        if has_ended(row):
            await self.consumer._send_final(message_id)

    async def ended_elsewhere(self, message_id):
        # The reaper numbers from the saved text, which may lag what this tab has seen: the saved
        # text with its status, then the final frame.
        await self.consumer._send_snapshot(message_id)
