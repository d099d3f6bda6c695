"""The request side of the OpenAI-compatible API: its errors in OpenAI's shape and the parsing that turns a
request body into checked values (or a 400 naming what is wrong) before any work is done."""
from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import JSONResponse

from .engine import Params

if TYPE_CHECKING:
    from .admission import Limits

ROLES = ("system", "user", "assistant")
USER_CHARS = 200  # a request's `user` (the store's column; the same limit on every backend)
GREEDY_BELOW = 1e-5  # a temperature under this is greedy decoding (vLLM's _SAMPLING_EPS)


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


def read_json(body: bytes):
    """The body as JSON, or a 400 that says why: not UTF-8, not JSON, or nested too deep to parse."""
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the body is not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the body is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply") from None


def _value(req: dict, name: str, default):
    """A sampling parameter; null (which clients send for "not set") is its default."""
    value = req.get(name)
    return default if value is None else value


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_unicode(text: str, where: str) -> None:
    """JSON may carry lone surrogates (\\ud800) that no tokenizer or database can take: refused here, not at the
    store after the generation."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{where}: not valid Unicode (a lone surrogate)", param=where) from None


def parse_chat(body: bytes, limits: "Limits") -> dict:
    """The request as plain values, or ApiError(400) naming what is wrong."""
    req = read_json(body)
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
        content, where = m.get("content"), f"messages[{i}].content"
        if isinstance(content, list):  # content parts: the text ones
            texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if not all(isinstance(t, str) for t in texts):
                raise ApiError(400, f"{where}: a text part's `text` must be a string", param=where)
            content = "".join(texts)
        if not isinstance(content, str) or not content.strip():
            raise ApiError(400, f"{where}: must be non-empty text", param=where)
        check_unicode(content, where)
        clean.append({"role": m["role"], "content": content})
    if clean[-1]["role"] != "user":
        raise ApiError(400, "messages: the last message must be the user's", param="messages")
    max_tokens = _value(req, "max_tokens", _value(req, "max_completion_tokens", min(256, limits.max_tokens)))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= limits.max_tokens:
        raise ApiError(400, f"max_tokens: must be an integer from 1 to {limits.max_tokens}; got {max_tokens!r}",
                       param="max_tokens")
    temperature, top_p = _value(req, "temperature", 1.0), _value(req, "top_p", 1.0)
    if not _number(temperature) or not 0 <= temperature <= 2:
        raise ApiError(400, f"temperature: must be from 0 to 2; got {temperature!r}", param="temperature")
    if temperature < GREEDY_BELOW:  # as vLLM does: dividing logits by ~0 overflows to inf / NaN probabilities
        temperature = 0.0
    if not _number(top_p) or not 0 < top_p <= 1:
        raise ApiError(400, f"top_p: must be in (0, 1]; got {top_p!r}", param="top_p")
    stop = req.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "stop: a string or up to 4 strings", param="stop")
    for s in stop:
        check_unicode(s, "stop")
    seed = req.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not -2**63 <= seed < 2**63):
        raise ApiError(400, "seed: must be a 64-bit integer", param="seed")
    metadata = req.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ApiError(400, "metadata: must be an object", param="metadata")
    options = req.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "stream_options: an object like {\"include_usage\": true}", param="stream_options")
    if not isinstance(req.get("stream", False), (bool, type(None))):
        raise ApiError(400, "stream: true or false", param="stream")
    user = req.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > USER_CHARS):
        raise ApiError(400, f"user: a string of at most {USER_CHARS} characters", param="user")
    if user is not None:
        check_unicode(user, "user")
    return {"messages": clean, "stream": bool(req.get("stream")), "user": user, "metadata": metadata,
            "include_usage": bool(options.get("include_usage")),
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
