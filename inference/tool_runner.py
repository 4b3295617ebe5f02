"""Tools the server runs for the model: the ones plugins register (hook ``register_tools``),
checked once when collected, and ``run_tool``, which runs one call and never raises.

A call runs on a thread of its own, never on the caller's event loop or the engine's thread,
and the caller waits at most the tool's time limit. Python cannot kill a thread, so a tool that
overruns keeps its thread until it returns; what bounds the damage is the number of calls
running at once (SMOLSITE_TOOL_WORKERS): while that many are still running (stuck ones
included) a new call is refused with an error outcome instead of piling up another thread.
The threads are daemons, so a stuck tool cannot hold up the process's exit either (the
reason this is not a ThreadPoolExecutor, whose threads are joined at exit).
"""
import copy
import json
import logging
import threading
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Callable

import jsonschema
from django.conf import settings

from .plugins import get_plugin_manager

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_OUTPUT = 8000
# Tool calls running at once, each on a thread of its own that holds a place (_call_places) until
# it returns. The setting keeps its name, SMOLSITE_TOOL_WORKERS, for the deployments that set it.
DEFAULT_CALLS_AT_ONCE = 8
# The model writes arguments under a grammar that bounds them; this only stops a pathological
# text before json.loads and the validator walk it.
MAX_ARGUMENT_CHARS = 100_000


@dataclass(frozen=True)
class Tool:
    name: str  # ^[a-zA-Z0-9_-]{1,64}$ (inference.structured.TOOL_NAME)
    description: str
    parameters: dict  # JSON Schema of type object, enforceable by inference.structured (checked when collected)
    fn: Callable  # fn(arguments: dict, context: ToolContext) -> str | dict | list (dict/list sent as JSON)
    timeout: float | None = None  # seconds; None: settings.SMOLSITE_TOOL_TIMEOUT


@dataclass(frozen=True)
class ToolContext:
    user_id: int  # the chat's owner: the tool acts as them and sees only their data
    conversation_id: int | None = None
    time_zone: str = "UTC"  # IANA name, from the user's browser


@dataclass(frozen=True)
class Outcome:
    status: str  # "ok" | "error" | "timeout"
    output: str  # what the model reads, at most SMOLSITE_TOOL_MAX_OUTPUT characters
    duration: float  # seconds


# ---- collecting ----------------------------------------------------------------------------

_lock = threading.Lock()
_collected = None  # (plugin manager, its register_tools implementations, {name: Tool})


def _problem(tool):
    """Why ``tool`` cannot be offered to a model, or None."""
    from . import structured as schemas
    from .structured import MAX_TOOL_DESCRIPTION_CHARS as MAX_DESCRIPTION_CHARS
    from .structured import TOOL_NAME as NAME

    if not isinstance(tool, Tool):
        return f"{tool!r:.80} is not an inference.tool_runner.Tool"
    if not isinstance(tool.name, str) or not NAME.match(tool.name):
        return f"the name {tool.name!r:.80} is not 1 to 64 letters, digits, underscores or dashes"
    if not isinstance(tool.description, str) or len(tool.description) > MAX_DESCRIPTION_CHARS:
        return f"the description must be a string of at most {MAX_DESCRIPTION_CHARS} characters"
    if not isinstance(tool.parameters, dict) or tool.parameters.get("type") != "object":
        return "parameters must be a JSON Schema with \"type\": \"object\""
    try:
        schemas.check(tool.parameters)  # a schema the call grammar could not enforce would fail every chat using it
    except schemas.SchemaError as exc:
        return f"its parameters cannot be enforced: {exc}"
    if not callable(tool.fn):
        return "fn is not callable"
    if tool.timeout is not None and (isinstance(tool.timeout, bool) or not isinstance(tool.timeout, (int, float))
                                     or not tool.timeout > 0):
        return "timeout must be a positive number of seconds or None"
    return None


def _collect(impls):
    tools = {}
    for impl in impls:
        if impl.hookwrapper or impl.wrapper:
            continue
        try:
            returned = list(impl.function() or [])
        except Exception:
            logger.warning("plugin %s: register_tools() failed; its tools are skipped", impl.plugin_name,
                           exc_info=True)
            continue
        for tool in returned:
            problem = _problem(tool)
            if problem is None and tool.name in tools:
                problem = f"another plugin already registered a tool named {tool.name!r}"
            if problem:
                logger.warning("plugin %s: tool skipped: %s", impl.plugin_name, problem)
                continue
            tools[tool.name] = tool
    return tools


def registered_tools(pm=None):
    """{name: Tool} from every loaded plugin (blocked plugins are never loaded), first
    registration of a name wins. A bad tool is skipped with a logged warning, never fatal."""
    global _collected
    pm = pm or get_plugin_manager()
    impls = tuple(pm.hook.register_tools.get_hookimpls())
    with _lock:
        if _collected is not None and _collected[0] is pm and _collected[1] == impls:
            return dict(_collected[2])
    tools = _collect(impls)  # outside the lock: plugin code may be slow, and two collections agree
    with _lock:
        _collected = (pm, impls, tools)
    return dict(tools)


def tool_specs(names):
    """[{"name", "description", "parameters"}] of the named registered tools, in the order
    given (unknown and repeated names skipped): what GenerationRequest.tools and
    inference.structured.tool_call_grammar take."""
    tools = registered_tools()
    specs, seen = [], set()
    for name in names:
        tool = tools.get(name)
        if tool is not None and name not in seen:
            seen.add(name)
            specs.append({"name": tool.name, "description": tool.description,
                          "parameters": copy.deepcopy(tool.parameters)})  # callers may store or adjust it
    return specs


# ---- running -------------------------------------------------------------------------------

_places = None


def _call_places():
    global _places
    with _lock:
        if _places is None:
            _places = threading.BoundedSemaphore(int(getattr(settings, "SMOLSITE_TOOL_WORKERS", DEFAULT_CALLS_AT_ONCE)))
        return _places


def _cap(text):
    limit = int(getattr(settings, "SMOLSITE_TOOL_MAX_OUTPUT", DEFAULT_MAX_OUTPUT))
    if len(text) <= limit:
        return text
    note = f"\n[output cut: {len(text):,} characters, the first {{kept:,}} shown]"
    kept = max(0, limit - len(note.format(kept=limit)))
    return (text[:kept] + note.format(kept=kept))[:limit]


def _outcome(status, output, started):
    return Outcome(status, _cap(output), time.monotonic() - started)


def _arguments(tool, text):
    """(arguments dict, None) or (None, why they are refused)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        text = "{}"  # a call with no arguments (toolcalls.call_text reads it the same way)
    if not isinstance(text, str):
        return None, "the arguments must be JSON text"
    if len(text) > MAX_ARGUMENT_CHARS:
        return None, f"the arguments are {len(text):,} characters; at most {MAX_ARGUMENT_CHARS:,} are accepted"
    try:
        arguments = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return None, f"the arguments are not valid JSON ({exc})"
    if not isinstance(arguments, dict):
        return None, "the arguments must be a JSON object"
    try:
        errors = jsonschema.Draft202012Validator(tool.parameters).iter_errors(arguments)
        error = jsonschema.exceptions.best_match(errors)
    except RecursionError:
        return None, "the arguments are nested too deeply"
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        return None, f"{where + ': ' if where else ''}{error.message}"
    return arguments, None


def _call(tool, arguments, context, future, places):
    try:
        future.set_result(tool.fn(arguments, context))
    except BaseException as exc:  # SystemExit too: it would only end this thread, silently
        future.set_exception(exc)
    finally:
        # This thread's database connections (a tool may read the owner's chats) end with it.
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            logger.debug("closing a tool thread's connections failed", exc_info=True)
        places.release()


def _describe(exc):
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not make run_tool raise
        message = "(no message)"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _text(value):
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"the tool returned {type(value).__name__}, not str, dict or list")


def run_tool(name, arguments, context):
    """Run the registered tool ``name`` with ``arguments`` (the JSON text the model wrote) as
    ``context.user_id``; an Outcome whatever happens. Blocks the calling thread up to the tool's
    time limit: call it from a plain thread (or through sync_to_async), not on an event loop."""
    started = time.monotonic()
    try:
        tool = registered_tools().get(name)
    except Exception as exc:
        logger.exception("could not collect the registered tools")
        return _outcome("error", _describe(exc), started)
    if tool is None:
        return _outcome("error", f"There is no tool named {str(name)[:64]!r}.", started)
    arguments, problem = _arguments(tool, arguments)
    if problem:
        return _outcome("error", f"Invalid arguments for {tool.name}: {problem}", started)
    places = _call_places()
    if not places.acquire(blocking=False):
        return _outcome("error", "Too many tool calls are running on this server; try again later.", started)
    future = Future()
    thread = threading.Thread(target=_call, args=(tool, arguments, context, future, places), daemon=True,
                              name=f"tool-{tool.name}")
    try:
        thread.start()
    except BaseException as exc:
        places.release()
        logger.exception("could not start a thread for tool %s", tool.name)
        return _outcome("error", _describe(exc), started)
    timeout = tool.timeout if tool.timeout is not None else float(getattr(settings, "SMOLSITE_TOOL_TIMEOUT",
                                                                          DEFAULT_TIMEOUT))
    # Waited for, not taken from result(timeout): a TimeoutError the tool raised itself is an error.
    wait([future], timeout=timeout)
    if not future.done():
        logger.warning("tool %s ran past its %g s limit (its thread runs on until it returns)", tool.name, timeout)
        return _outcome("timeout", f"No result after {timeout:g} seconds.", started)
    exc = future.exception()
    if exc is None:
        try:
            return _outcome("ok", _text(future.result()), started)
        except Exception as bad:  # not text, or not JSON-serialisable: the tool's bug
            logger.warning("tool %s returned what cannot be sent to the model: %s", tool.name, bad)
            return _outcome("error", _describe(bad), started)
    # The model gets the error's type and message; the traceback goes to the log only. A
    # ValueError is how a tool refuses its input (a bad expression, an unknown zone): no bug, no traceback.
    if isinstance(exc, (ValueError, ArithmeticError)):
        logger.info("tool %s refused its arguments: %s", tool.name, _describe(exc))
    else:
        logger.warning("tool %s failed", tool.name, exc_info=exc)
    return _outcome("error", _describe(exc), started)
