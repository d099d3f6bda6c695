"""The request side of the OpenAI-compatible API: its errors in OpenAI's shape and the parsing that turns a
request body into checked values (or a 400 naming what is wrong) before any work is done."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import JSONResponse

from .engine import Params

if TYPE_CHECKING:
    from .admission import Limits

ROLES = ("system", "user", "assistant")
USER_CHARS = 200  # a request's `user` (the store's column; the same limit on every backend)


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


def parse_chat(body: bytes, limits: "Limits") -> dict:
    """The request as plain values, or ApiError(400) naming what is wrong."""
    try:
        req = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the body is not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the body is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(req, dict):
        raise ApiError(400, "the body must be a JSON object")
    msgs = req.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "messages: must be a non-empty list", param="messages")
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}].role: must be one of {', '.join(ROLES)}; got "
                                f"{m.get('role') if isinstance(m, dict) else m!r}", param=f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):  # content parts: the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str) or not content.strip():
            raise ApiError(400, f"messages[{i}].content: must be non-empty text", param=f"messages[{i}].content")
        clean.append({"role": m["role"], "content": content})
    if clean[-1]["role"] != "user":
        raise ApiError(400, "messages: the last message must be the user's", param="messages")
    max_tokens = req.get("max_tokens", req.get("max_completion_tokens", min(256, limits.max_tokens)))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= limits.max_tokens:
        raise ApiError(400, f"max_tokens: must be an integer from 1 to {limits.max_tokens}; got {max_tokens!r}",
                       param="max_tokens")
    temperature, top_p = req.get("temperature", 1.0), req.get("top_p", 1.0)
    if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise ApiError(400, f"temperature: must be from 0 to 2; got {temperature!r}", param="temperature")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ApiError(400, f"top_p: must be in (0, 1]; got {top_p!r}", param="top_p")
    stop = req.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "stop: a string or up to 4 strings", param="stop")
    seed = req.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ApiError(400, "seed: must be an integer", param="seed")
    metadata = req.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ApiError(400, "metadata: must be an object", param="metadata")
    user = req.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > USER_CHARS):
        raise ApiError(400, f"user: a string of at most {USER_CHARS} characters", param="user")
    return {"messages": clean, "stream": bool(req.get("stream")), "user": user, "metadata": metadata,
            "include_usage": bool((req.get("stream_options") or {}).get("include_usage")),
            "params": Params(max_tokens, float(temperature), float(top_p), stop, seed)}


def consent_of(request: Request, metadata: dict) -> bool | None:
    """A request's own consent: `metadata.consent` ("true"/"false", OpenAI metadata values are strings) or the
    `X-Convlearn-Consent` header; None when it says nothing (the conversation's, or the key's default)."""
    value = metadata.get("consent", request.headers.get("x-convlearn-consent"))
    if value is None:
        return None
    if str(value).lower() in ("true", "1", "yes", "on"):
        return True
    if str(value).lower() in ("false", "0", "no", "off"):
        return False
    raise ApiError(400, f"consent: true or false; got {value!r}", param="metadata.consent")
