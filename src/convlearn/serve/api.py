"""The OpenAI-compatible API (FastAPI on uvicorn): chat completions (plain and streamed as server-sent events),
models, feedback, deleting a conversation, the version timeline, and the web page.

Every endpoint but `/health` and the page needs an API key (`Authorization: Bearer ...`). Errors have OpenAI's
shape (`{"error": {"message", "type", "param", "code"}}`) and a status that says what to do: 400 a bad request
(naming the limit it broke), 401 a bad key, 404, 413 a body over the limit, 429 over the key's rate, 503 when
every generation slot is busy and the queue is full or the wait ran out (never a hang).

An exchange is written to the store once its reply is complete, before the last byte of the response is sent:
a client that received a whole reply can count on it being stored; a reply cut short is stored nowhere.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..store import Store
from .engine import Completion, ModelHolder, Params

ROLES = ("system", "user", "assistant")
STATIC = Path(__file__).parent / "static"


@dataclass
class Limits:
    max_body_bytes: int = 1_000_000       # request body
    max_tokens: int = 512                 # the largest max_tokens a request may ask for
    concurrency: int = 2                  # generations at once
    queue: int = 8                        # requests waiting for a slot; more get 503 at once
    queue_timeout_s: float = 30.0         # a request waiting longer gets 503
    rate_per_minute: int = 120            # requests per key per minute; more get 429


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


class Gate:
    """Bounded concurrency with a bounded queue: a request either gets a slot, waits in a queue that has room
    (up to a time limit), or is told at once (503)."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.slots = asyncio.Semaphore(limits.concurrency)
        self.waiting = 0
        self.running = 0

    async def acquire(self) -> "Slot":
        if self.slots.locked() and self.waiting >= self.limits.queue:
            raise ApiError(503, f"the server is busy: {self.limits.concurrency} generations running and "
                                f"{self.waiting} waiting (queue limit {self.limits.queue}); retry shortly",
                           "server_error", code="overloaded", headers={"Retry-After": "1"})
        self.waiting += 1
        try:
            await asyncio.wait_for(self.slots.acquire(), self.limits.queue_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(503, f"no generation slot within {self.limits.queue_timeout_s:g} s; retry shortly",
                           "server_error", code="timeout", headers={"Retry-After": "1"}) from None
        finally:
            self.waiting -= 1
        self.running += 1
        return Slot(self)


class Slot:
    """One held generation slot; released once, by whoever holds it last (the handler, or a stream's end)."""

    def __init__(self, gate: Gate):
        self.gate, self.held = gate, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.gate.running -= 1
            self.gate.slots.release()


class SlotStreamingResponse(StreamingResponse):
    """A stream that owns its slot until the response is over, however it ends (done, client gone, error):
    the body runs after the handler returned, so the handler cannot hold the slot itself."""

    def __init__(self, content, slot: Slot, **kwargs):
        super().__init__(content, **kwargs)
        self.slot = slot

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()


class RateLimit:
    def __init__(self, per_minute: int):
        self.per_minute, self.seen = per_minute, defaultdict(deque)

    def check(self, key_id: int) -> None:
        now, q = time.monotonic(), self.seen[key_id]
        while q and now - q[0] > 60:
            q.popleft()
        if len(q) >= self.per_minute:
            raise ApiError(429, f"rate limit: {self.per_minute} requests per minute for this key", "rate_limit_error",
                           code="rate_limit_exceeded", headers={"Retry-After": str(int(61 - (now - q[0])))})
        q.append(now)


def parse_chat(body: bytes, limits: Limits) -> dict:
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
    return {"messages": clean, "stream": bool(req.get("stream")), "user": req.get("user"), "metadata": metadata,
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


def create_app(holder: ModelHolder, store: Store, limits: Limits) -> FastAPI:
    app = FastAPI(title="convlearn", docs_url=None, redoc_url=None, openapi_url=None)
    gate, rate = Gate(limits), RateLimit(limits.rate_per_minute)
    app.state.holder, app.state.store, app.state.limits = holder, store, limits

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return e.response()

    @app.exception_handler(404)
    async def _not_found(request: Request, e):
        return ApiError(404, f"no such endpoint: {request.method} {request.url.path}", code="not_found").response()

    @app.exception_handler(405)
    async def _not_allowed(request: Request, e):
        return ApiError(405, f"{request.method} is not allowed on {request.url.path}").response()

    async def body_of(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise ApiError(413, f"the body is {int(declared):,} bytes; the limit is {limits.max_body_bytes:,}",
                           code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise ApiError(413, f"the body is over the limit of {limits.max_body_bytes:,} bytes",
                               code="body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def key_of(request: Request):
        auth = request.headers.get("authorization", "")
        secret = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        key = store.key_for(secret)
        if key is None:
            raise ApiError(401, "invalid API key (convlearn keys add NAME makes one)", "invalid_request_error",
                           code="invalid_api_key")
        return key

    @app.get("/health")
    async def health():
        return {"status": "ok", "version": holder.engine().version}

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/v1/models")
    async def models(request: Request):
        key_of(request)
        engine = holder.engine()
        return {"object": "list", "data": [{"id": engine.version, "object": "model", "created": 0,
                                            "owned_by": "convlearn"}]}

    @app.get("/v1/versions")
    async def version_list(request: Request):
        key_of(request)
        current = await run_in_threadpool(store.current_id)
        rows = await run_in_threadpool(store.versions)
        return {"current": current, "serving": holder.engine().version,
                "data": [{k: v for k, v in r.values().items() if k != "path"} for r in rows]}

    @app.post("/v1/feedback")
    async def give_feedback(request: Request):
        key = key_of(request)
        try:
            req = json.loads((await body_of(request)).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiError(400, "the body must be JSON: {response_id, rating: up|down, text?}") from None
        rating = {"up": 1, "down": -1, 1: 1, -1: -1}.get(req.get("rating")) if isinstance(req, dict) else None
        if rating is None or not isinstance(req.get("response_id"), str):
            raise ApiError(400, "feedback: {response_id: string, rating: up|down, text?: string}")
        if not await run_in_threadpool(store.add_feedback, key, req["response_id"], rating, req.get("text")):
            raise ApiError(404, f"no response {req['response_id']!r} of this key", code="not_found")
        return {"ok": True}

    @app.delete("/v1/conversations/{conversation_id}")
    async def forget(conversation_id: str, request: Request):
        key = key_of(request)
        if not await run_in_threadpool(store.delete_conversation, conversation_id, key):
            raise ApiError(404, f"no conversation {conversation_id!r} of this key", code="not_found")
        return {"id": conversation_id, "deleted": True}

    @app.post("/v1/conversations/{conversation_id}/consent")
    async def consent(conversation_id: str, request: Request):
        key = key_of(request)
        try:
            value = json.loads((await body_of(request)).decode("utf-8")).get("consent")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            value = None
        if not isinstance(value, bool):
            raise ApiError(400, "consent: {consent: true|false}")
        if not await run_in_threadpool(store.set_consent, conversation_id, key, value):
            raise ApiError(404, f"no conversation {conversation_id!r} of this key", code="not_found")
        return {"id": conversation_id, "consent": value}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        key = key_of(request)
        rate.check(key.id)
        req = parse_chat(await body_of(request), limits)
        consent_value = consent_of(request, req["metadata"])
        slot = await gate.acquire()
        try:
            engine = holder.engine()  # this request's model, to its end, whatever a swap does meanwhile
            prompt = await run_in_threadpool(engine.prompt_tokens, req["messages"])
            params: Params = req["params"]
            if prompt + params.max_tokens > engine.context:
                raise ApiError(400, f"the prompt is {prompt} tokens and max_tokens {params.max_tokens}: together "
                                    f"over this model's context of {engine.context} tokens", param="messages",
                               code="context_length_exceeded")
            rid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
            done = Completion()
            record = (key, req["messages"], rid, engine.version, consent_value, req["user"])
            if req["stream"]:
                response = SlotStreamingResponse(_events(engine, req, params, done, rid, created, store, record),
                                                 slot, media_type="text/event-stream",
                                                 headers={"Cache-Control": "no-cache"})
                slot = None  # the response owns it now
                return response
            await run_in_threadpool(lambda: "".join(engine.stream(req["messages"], params, done)))
            cid = await run_in_threadpool(_store, store, record, done)
            return JSONResponse(_completion(rid, created, engine.version, done, cid),
                                headers={"X-Convlearn-Conversation": cid})
        finally:
            if slot is not None:
                slot.release()

    @app.get("/v1/status")
    async def status(request: Request):
        key_of(request)
        return {"serving": holder.engine().version, "running": gate.running, "waiting": gate.waiting,
                "swaps": holder.swaps, "limits": limits.__dict__, "store": await run_in_threadpool(store.counts)}

    return app


def _store(store: Store, record: tuple, done: Completion) -> str:
    key, msgs, rid, version, consent, user = record
    return store.record_exchange(key, msgs, done.text, rid, version, consent, user)


def _completion(rid, created, model, done: Completion, cid: str) -> dict:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model, "conversation_id": cid,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                         "finish_reason": done.finish_reason, "logprobs": None}],
            "usage": _usage(done)}


def _usage(done: Completion) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


async def _events(engine, req, params, done, rid, created, store, record):
    """Server-sent events: the role, the text as it comes, the finish; the exchange is stored before the last
    event (a client that saw the finish can count on it being stored)."""
    def chunk(delta: dict, finish=None, **extra) -> str:
        body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": engine.version,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return f"data: {json.dumps(body)}\n\n"
    queue: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    cancelled = threading.Event()

    def produce():
        try:
            for piece in engine.stream(req["messages"], params, done, cancelled):
                loop.call_soon_threadsafe(queue.put_nowait, ("text", piece))
            loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
        except BaseException as e:  # reported to the client as an error event
            loop.call_soon_threadsafe(queue.put_nowait, ("error", e))
    yield chunk({"role": "assistant", "content": ""})
    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "text":
                yield chunk({"content": value})
            elif kind == "error":
                yield f"data: {json.dumps({'error': {'message': str(value), 'type': 'server_error'}})}\n\n"
                return
            else:
                break
        cid = await run_in_threadpool(_store, store, record, done)
        yield chunk({}, done.finish_reason, conversation_id=cid)
        if req["include_usage"]:
            body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": engine.version,
                    "choices": [], "usage": _usage(done)}
            yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        cancelled.set()  # a client that went away stops the generation
        await run_in_threadpool(worker.join)
