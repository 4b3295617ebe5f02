"""Open chat websockets stay signed in only as long as their session does.

A socket is authenticated once, at connect; this re-checks it on every frame, every
SMOLSITE_WS_AUTH_SECONDS while idle, and (at most once a second) before forwarding new events:
the session must still exist, its user be active with an unchanged password (the session's auth
hash), and the chat still be theirs. Otherwise the socket is told why and closed with a code the
page acts on instead of reconnecting (static/chat/socket.js)."""
import asyncio
import logging
from importlib import import_module

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib import auth
from django.contrib.auth import SESSION_KEY

from inference.publish import publish_loop

from .limits import renew_socket
from .models import Conversation, conversation_group

logger = logging.getLogger(__name__)

SIGNED_OUT = 4401  # logged out, password changed, account deactivated
NOT_ALLOWED = 4403  # not this user's chat (or no such chat), at connect
GONE = 4404  # the chat was deleted while open
TOO_MANY = 4429  # the user has SMOLSITE_MAX_SOCKETS_PER_USER chat sockets open already (chat.limits)
EVENT_AUTH_SECONDS = 1.0  # forwarding events re-checks at most this often (frames always do)


class _SessionRequest:
    """What django.contrib.auth.get_user needs of a request: its session."""

    def __init__(self, session):
        self.session = session


def contains_nul(value):
    """Whether a decoded JSON value holds a NUL character anywhere (PostgreSQL text cannot)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class SessionRecheckMixin:
    """For ChatConsumer: needs ``self.user``, ``self.scope``, ``self.conversation_id`` and ``error()``."""

    closing = False
    auth_task = None
    auth_checked = 0.0

    async def refuse(self, code, text=None):
        """Accept, then close with ``code``: a close before accept reaches browsers as 1006, which
        they retry forever."""
        self.closing = True
        await self.accept()
        if text:
            await self.error(text)
        await self.close(code=code)

    @database_sync_to_async
    def remember_auth(self):
        # Signed in through the session (always, when served): re-check that session. A user put
        # in the scope directly (tests) is re-checked by its row and its password hash.
        session = self.scope.get("session")
        self.session_key = session.session_key if session is not None and session.get(SESSION_KEY) else None
        self.auth_hash = self.user.get_session_auth_hash()

    def start_auth_watch(self):
        self.auth_checked = asyncio.get_running_loop().time()
        self.auth_task = asyncio.get_running_loop().create_task(self._watch_auth())

    def stop_auth_watch(self):
        self.closing = True
        if self.auth_task is not None:
            self.auth_task.cancel()

    @database_sync_to_async
    def _auth_problem(self):
        """None while this socket may go on; else the close code and what to tell the page."""
        if self.session_key is not None:
            store = import_module(settings.SESSION_ENGINE).SessionStore(session_key=self.session_key)
            user = auth.get_user(_SessionRequest(store))  # session gone, user inactive, password changed
            if not user.is_authenticated or user.pk != self.user.pk:
                return SIGNED_OUT, "You were signed out: sign in again."
        else:
            user = type(self.user)._default_manager.filter(pk=self.user.pk).first()
            if user is None or not user.is_active or user.get_session_auth_hash() != self.auth_hash:
                return SIGNED_OUT, "You were signed out: sign in again."
        owner = Conversation.objects.filter(pk=self.conversation_id).values_list("owner_id", flat=True).first()
        if owner is None:
            return GONE, "This chat was deleted."
        if owner != self.user.pk:
            return NOT_ALLOWED, "This chat is not yours."
        return None

    async def still_allowed(self):
        """Re-check now; close the socket (once) when the session or the chat no longer holds."""
        if self.closing:
            return False
        self.auth_checked = asyncio.get_running_loop().time()
        problem = await self._auth_problem()
        if problem is None or self.closing:
            return not self.closing
        self.closing = True
        code, text = problem
        await self.error(text, closing=code)
        await self.close(code=code)
        return False

    async def auth_recheck(self, event):
        """A group event sent when the chat or its owner was just deleted (recheck_sockets):
        check now rather than at the next idle re-check."""
        self.auth_checked = 0.0
        await self.still_allowed()

    async def allowed_for_events(self):
        if self.closing:
            return False
        if asyncio.get_running_loop().time() - self.auth_checked < EVENT_AUTH_SECONDS:
            return True
        return await self.still_allowed()

    async def _watch_auth(self):
        """Every few seconds, so an idle socket closes soon after its user signs out."""
        while not self.closing:
            await asyncio.sleep(settings.SMOLSITE_WS_AUTH_SECONDS)
            try:
                await self.still_allowed()
            except Exception:  # a database hiccup: check again next time
                logger.warning("could not re-check a chat socket's session", exc_info=True)
            tick = getattr(self, "on_watch_tick", None)
            if tick is not None and not self.closing:
                try:
                    await tick()
                except Exception:  # a database hiccup: again next time
                    logger.warning("a chat socket's periodic check failed", exc_info=True)
            if getattr(self, "socket_counted", False) and not self.closing:
                try:  # still open: its entry in the user's open-socket count must not expire
                    await sync_to_async(renew_socket, thread_sensitive=False)(self.user.pk, self.channel_name)
                except Exception:
                    logger.warning("could not renew a chat socket's count", exc_info=True)


def recheck_sockets(conversation_ids):
    """Tell the open sockets of these chats to re-check now (their chat or their user was deleted),
    from any thread: on the web server's loop when known (the in-memory layer is not thread-safe),
    else on a loop of this process's own (Redis layers)."""
    layer = get_channel_layer()
    ids = list(conversation_ids)
    if layer is None or not ids:
        return

    async def send():
        for pk in ids:
            try:
                await layer.group_send(conversation_group(pk), {"type": "auth.recheck"})
            except Exception:  # the idle re-check closes them within SMOLSITE_WS_AUTH_SECONDS anyway
                logger.warning("could not ask chat %s's sockets to re-check", pk, exc_info=True)

    asyncio.run_coroutine_threadsafe(send(), publish_loop())
