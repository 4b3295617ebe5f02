"""A GenerationRequest as the body of an OpenAI-compatible request to an upstream. Only the
request's own turns go in (each request is built from its own conversation: nothing of another
user's), and the upstream's key is the admin's, never a user's."""
import json

from inference.plugin_api import GenerationRequest


class Unsupported(ValueError):
    """The upstream cannot do what the request needs (it must fail, never answer unconstrained)."""


def messages(request):
    out = [{"role": "system", "content": request.system_prompt}] if request.system_prompt else []
    for m in request.messages:
        role = m["role"]
        if role == "assistant":
            item = {"role": "assistant", "content": m.get("content") or ""}
            calls = m.get("tool_calls") or []
            if calls:
                item["tool_calls"] = [{"id": c.get("id") or f"call_{i}", "type": "function", "function": {
                    "name": c["name"], "arguments": c["arguments"] if isinstance(c["arguments"], str)
                    else json.dumps(c["arguments"])}} for i, c in enumerate(calls)]
                item["content"] = item["content"] or None
            out.append(item)
        elif role == "tool":
            out.append({"role": "tool", "tool_call_id": m.get("tool_call_id", ""), "content": m.get("content", "")})
        else:
            out.append({"role": role, "content": m.get("content", "")})
    return out


def build(upstream, remote_model, request: GenerationRequest):
    """(path, body) for ``request`` on ``upstream``; raises Unsupported."""
    p = request.params
    body = {"model": remote_model, "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": p.max_tokens, "temperature": p.temperature, "top_p": p.top_p}
    if p.seed is not None:
        body["seed"] = p.seed
    if p.stop:
        body["stop"] = list(p.stop)
    if request.tools:
        if not upstream.tools:
            raise Unsupported(f"The upstream {upstream.name} is not set up for tool calls (tools).")
        body["tools"] = [{"type": "function", "function": {
            "name": t["name"], "description": t.get("description", ""),
            "parameters": t.get("parameters") or {"type": "object", "properties": {}}}} for t in request.tools]
        # A grammar from the start forces a call; one that waits for a call is the model's choice.
        body["tool_choice"] = "required" if request.grammar and not request.grammar_waits_for_call else "auto"
    elif request.grammar:
        if upstream.structured_output != "grammar":
            raise Unsupported(f"The upstream {upstream.name} cannot enforce structured output (response_format), "
                              "so this request is refused rather than answered unconstrained.")
        body["grammar"] = request.grammar
    if request.raw_prompt is not None:
        body["prompt"] = request.raw_prompt
        return "/completions", body
    body["messages"] = messages(request)
    return "/chat/completions", body
