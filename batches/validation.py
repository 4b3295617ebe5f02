"""Checks every line of a batch input file before anything runs, with the chat completions
endpoint's own parser (api.params), so a line is accepted exactly when the endpoint would be."""
import csv
import io
import json

from django.conf import settings

from api import params
from api.errors import ApiError

ENDPOINTS = ("/v1/chat/completions",)


class BatchInvalid(Exception):
    def __init__(self, errors):
        super().__init__(f"{len(errors)} line(s) are invalid")
        self.errors = errors


def error(code, message, line=None, param=None):
    return {"code": code, "message": message, "param": param, "line": line}


def parse_line(body, endpoint="/v1/chat/completions"):
    """The checked Plan of one request body (raises ApiError as the endpoint would)."""
    if not isinstance(body, dict):
        raise params.invalid("'body' must be a JSON object: what POST /v1/chat/completions accepts.", "body")
    if params._has_nul(body):
        raise params.invalid("The request contains a NUL character (\\u0000), which text here cannot hold.")
    if body.get("stream"):
        raise params.invalid("'stream' is not supported in a batch: each line's answer is written whole.", "stream")
    return params.check_plan(params.parse_chat(body))


def validate_jsonl(data, endpoint="/v1/chat/completions"):
    """[(custom_id, body, plan)] for the file's lines, or BatchInvalid with every problem found
    (line numbers 1-based, as OpenAI reports them)."""
    errors = []
    if endpoint not in ENDPOINTS:
        raise BatchInvalid([error("invalid_endpoint", f"The endpoint '{str(endpoint)[:60]}' is not supported: "
                                                      f"use {', '.join(ENDPOINTS)}.", param="endpoint")])
    if len(data) > settings.SMOLSITE_BATCH_MAX_BYTES:
        raise BatchInvalid([error("file_too_large", f"The file is {len(data):,} bytes; at most "
                                                    f"{settings.SMOLSITE_BATCH_MAX_BYTES:,} are accepted.")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BatchInvalid([error("invalid_encoding", f"The file is not UTF-8 text ({exc}).")]) from None
    raw_lines = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    if not raw_lines:
        raise BatchInvalid([error("empty_file", "The file has no requests: one JSON object a line.")])
    if len(raw_lines) > settings.SMOLSITE_BATCH_MAX_LINES:
        raise BatchInvalid([error("too_many_requests", f"The file has {len(raw_lines):,} requests; at most "
                                                       f"{settings.SMOLSITE_BATCH_MAX_LINES:,} are accepted.")])
    seen, out = {}, []
    for number, line in raw_lines:
        try:
            item = json.loads(line)
        except (ValueError, RecursionError) as exc:
            errors.append(error("invalid_json_line", f"This line is not valid JSON ({str(exc)[:120]}).", number))
            continue
        if not isinstance(item, dict):
            errors.append(error("invalid_json_line", "Each line must be a JSON object.", number))
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            errors.append(error("missing_custom_id", "'custom_id' is required: a non-empty string.", number,
                                "custom_id"))
        elif len(custom_id) > 512:
            errors.append(error("invalid_custom_id", "'custom_id' is longer than 512 characters.", number, "custom_id"))
        elif custom_id in seen:
            errors.append(error("duplicate_custom_id", f"The custom_id '{custom_id[:100]}' is already used on line "
                                                       f"{seen[custom_id]}: each must be unique.", number, "custom_id"))
        else:
            seen[custom_id] = number
        if item.get("method") != "POST":
            errors.append(error("invalid_method", "'method' must be \"POST\".", number, "method"))
        if item.get("url") != endpoint:
            errors.append(error("invalid_url", f"'url' must be the batch's endpoint, \"{endpoint}\".", number, "url"))
        try:
            plan = parse_line(item.get("body"), endpoint)
        except ApiError as exc:
            code = exc.code or ("model_not_found" if exc.status == 404 else "invalid_request")
            errors.append(error(code, exc.message, number, f"body.{exc.param}" if exc.param else "body"))
            continue
        # Each line's grammar is made again when the line runs: kept here, a file of 50,000 lines
        # with different schemas held all of theirs until the batch was made.
        plan.grammar, plan.schema = "", None
        out.append((custom_id, item["body"], plan))
    if errors:
        raise BatchInvalid(errors)
    return out


def csv_to_jsonl(data, model, max_tokens=None):
    """A CSV with a ``prompt`` column (optional ``system`` and ``custom_id``) as batch JSONL bytes."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BatchInvalid([error("invalid_encoding", f"The file is not UTF-8 text ({exc}).")]) from None
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    if "prompt" not in fields:
        raise BatchInvalid([error("missing_prompt_column", "The CSV needs a 'prompt' column (optional: system, "
                                                           "custom_id).", 1)])
    lines = []
    for i, row in enumerate(reader):
        row = {(k or "").strip().lower(): (v or "") for k, v in row.items()}
        messages = []
        if row.get("system", "").strip():
            messages.append({"role": "system", "content": row["system"]})
        messages.append({"role": "user", "content": row.get("prompt", "")})
        body = {"model": model, "messages": messages}
        if max_tokens:
            body["max_tokens"] = max_tokens
        lines.append(json.dumps({"custom_id": row.get("custom_id", "").strip() or f"row-{i + 1}", "method": "POST",
                                 "url": "/v1/chat/completions", "body": body}, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode()
