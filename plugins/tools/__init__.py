"""The built-in tools, a plugin like any other: block it with SMOLSITE_BLOCKED_PLUGINS=tools.
Each works offline: exact arithmetic, the time where the user is, a search of their own chats."""
from inference.plugin_api import Tool, hookimpl

from . import calculator, chat_search, clock


@hookimpl
def register_tools():
    return [
        Tool("calculator", calculator.DESCRIPTION, calculator.SCHEMA, calculator.calculator),
        Tool("current_time", clock.DESCRIPTION, clock.SCHEMA, clock.current_time),
        Tool("search_my_chats", chat_search.DESCRIPTION, chat_search.SCHEMA, chat_search.search_my_chats),
    ]
