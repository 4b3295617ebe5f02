"""A tool from a third-party distribution, in an entry point of its own ("hello_tools"), so the
"hello" plugin's hooks stay what tests/test_plugins.py expects."""
from inference.plugin_api import Tool, hookimpl

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 100, "description": "Who to greet."}},
    "required": ["name"],
    "additionalProperties": False,
}


def hello(arguments, context):
    return f"Hello, {arguments['name']}! (from smolsite-hello, for user {context.user_id})"


@hookimpl
def register_tools():
    return [Tool("hello", "Greet someone by name.", SCHEMA, hello)]
