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
import logging
import threading
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..store import Store, StoreUnavailable
from .admission import Gate, Limits, RateLimit, SlotStreamingResponse
from .engine import Completion, ModelHolder, Params
from .protocol import ApiError, check_unicode, consent_of, parse_chat, read_json

__all__ = ["ApiError", "Limits", "create_app"]

STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
# What /v1/versions shows every key (the timeline), and an admin key besides (what each round learned from and
# the gate's figures: store-wide numbers).
VERSION_FIELDS = {"id", "status", "parent", "created", "round"}
VERSION_FIELDS_ADMIN = VERSION_FIELDS | {"seq_from", "seq_to", "conversations", "gate"}
log = logging.getLogger("convlearn.serve")
DISCONNECT_POLL_S = 0.1  # how often a non-streamed request looks whether its client is still there
MARKED_RETRY_WINDOW_S = 3600.0  # a request the client marks as a retry: its first try may be this old


def create_app(holder: ModelHolder, store: Store, limits: Limits) -> FastAPI:
    app = FastAPI(title="convlearn", docs_url=None, redoc_url=None, openapi_url=None)
    gate, rate = Gate(limits), RateLimit(store, limits.rate_per_minute)
    app.state.holder, app.state.store, app.state.limits, app.state.gate = holder, store, limits, gate

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return e.response()

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, e: StoreUnavailable):  # any write refused before a reply (rate, feedback)
        return store_error(e, "the store refused the request").response()

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
        # never framed (a page framed from another origin on this host would get the key pre-filled from storage)
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    @app.get("/v1/models")
    async def models(request: Request):
        key_of(request)
        engine = holder.engine()
        return {"object": "list", "data": [{"id": engine.version, "object": "model", "created": 0,
                                            "owned_by": "convlearn"}]}

    @app.get("/v1/versions")
    async def version_list(request: Request):
        key = key_of(request)
        current = await run_in_threadpool(store.current_id)
        rows = await run_in_threadpool(store.versions)
        shown = VERSION_FIELDS_ADMIN if key.admin else VERSION_FIELDS
        return {"current": current, "serving": holder.engine().version,
                "data": [{k: v for k, v in r.values().items() if k in shown} for r in rows]}

    @app.get("/v1/conversations")
    async def my_conversations(request: Request):
        """The caller's own conversations, newest first (so a page reload can still withdraw or delete one);
        `?limit=` (1-100, default 50) and `?before=` (an `updated` time: the next page)."""
        key = key_of(request)
        q = request.query_params
        try:
            limit = int(q.get("limit", "50"))
            before = float(q["before"]) if q.get("before") else None
        except ValueError:
            raise ApiError(400, "limit: an integer; before: a time (a conversation's `updated`)") from None
        if not 1 <= limit <= 100:
            raise ApiError(400, f"limit: from 1 to 100; got {limit}", param="limit")
        rows = await run_in_threadpool(store.conversations_of, key, limit + 1, before)
        return {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit}

    @app.post("/v1/feedback")
    async def give_feedback(request: Request):
        key = key_of(request)
        req = read_json(await body_of(request))
        value = req.get("rating") if isinstance(req, dict) else None
        rating = {"up": 1, "down": -1, 1: 1, -1: -1}.get(value) if isinstance(value, (str, int)) else None
        text_ = req.get("text") if isinstance(req, dict) else None
        if rating is None or not isinstance(req.get("response_id"), str) or not isinstance(text_, (str, type(None))):
            raise ApiError(400, "feedback: {response_id: string, rating: up|down, text?: string}")
        if text_ is not None:
            check_unicode(text_, "text")
        if not await run_in_threadpool(store.add_feedback, key, req["response_id"], rating, text_):
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
        req = read_json(await body_of(request))
        value = req.get("consent") if isinstance(req, dict) else None
        if not isinstance(value, bool):
            raise ApiError(400, "consent: {consent: true|false}")
        if not await run_in_threadpool(store.set_consent, conversation_id, key, value):
            raise ApiError(404, f"no conversation {conversation_id!r} of this key", code="not_found")
        return {"id": conversation_id, "consent": value}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        key = key_of(request)
        await run_in_threadpool(rate.check, key)
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
            record = (key, req["messages"], rid, engine.version, consent_value, req["user"],
                      retry_window(request, limits))
            if req["stream"]:
                response = SlotStreamingResponse(_events(engine, req, params, done, rid, created, store, record),
                                                 slot, media_type="text/event-stream",
                                                 headers={"Cache-Control": "no-cache"})
                slot = None  # the response owns it now
                return response
            if not await _generate_unless_gone(request, engine, req["messages"], params, done):
                return Response(status_code=499)  # the client hung up: nothing stored, the slot freed at once
            cid = await run_in_threadpool(_store, store, record, done)
            return JSONResponse(_completion(rid, created, engine.version, done, cid),
                                headers={"X-Convlearn-Conversation": cid})
        finally:
            if slot is not None:
                slot.release()

    @app.get("/v1/status")
    async def status(request: Request):
        key = key_of(request)
        mine = {"serving": holder.engine().version, "key": key.name,
                "yours": await run_in_threadpool(store.counts, key)}
        if not key.admin:  # the server's load and the store's totals are the operator's
            return mine
        return {**mine, "running": gate.running, "waiting": gate.waiting, "swaps": holder.swaps,
                "limits": limits.__dict__, "store": await run_in_threadpool(store.counts)}

    return app


async def _generate_unless_gone(request: Request, engine, messages, params, done: Completion) -> bool:
    """Generate a whole reply, watching the connection: a client that hangs up (a timeout, a closed tab) stops
    the generation within DISCONNECT_POLL_S and gets nothing stored, as a stream's client does. False if gone."""
    cancelled = threading.Event()
    work = asyncio.ensure_future(run_in_threadpool(lambda: "".join(engine.stream(messages, params, done, cancelled))))
    try:
        while not work.done():
            await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
            if not work.done() and await request.is_disconnected():
                cancelled.set()
                await work
                return False
        await work
        return True
    finally:
        cancelled.set()


def retry_window(request: Request, limits: Limits) -> float:
    """How far back the same request counts as this one's first try. openai-python and openai-node number their
    retries (`x-stainless-retry-count`); a request they mark as a retry is one whatever the server's window."""
    marked = request.headers.get("x-stainless-retry-count", "0")
    return max(limits.retry_window_s, MARKED_RETRY_WINDOW_S if marked.isdigit() and int(marked) > 0 else 0.0)


def _store(store: Store, record: tuple, done: Completion) -> str:
    """Write the exchange; a store that cannot take it is an ApiError: 507 when it is full, else 503 (the reply
    is then stored nowhere, and the client is told so instead of receiving a reply it may think was kept)."""
    key, msgs, rid, version, consent, user, window = record
    try:
        return store.record_exchange(key, msgs, done.text, rid, version, consent, user, retry_window=window)
    except StoreUnavailable as e:
        raise store_error(e, "the reply could not be stored") from None


def store_error(e: StoreUnavailable, what: str) -> ApiError:
    log.error("%s: %s", what, e.reason)
    return ApiError(507 if e.full else 503, f"{what} ({e.reason}); nothing was kept", "server_error",
                    code="store_full" if e.full else "store_unavailable", headers={"Retry-After": "30"})


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
        try:
            cid = await run_in_threadpool(_store, store, record, done)
        except ApiError as e:  # an error event, then the end: never a stream that just stops
            yield f"data: {json.dumps({'error': {'message': e.message, 'type': e.kind, 'code': e.code}})}\n\n"
            yield "data: [DONE]\n\n"
            return
        yield chunk({}, done.finish_reason, conversation_id=cid)
        if req["include_usage"]:
            body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": engine.version,
                    "choices": [], "usage": _usage(done)}
            yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        cancelled.set()  # a client that went away stops the generation
        await run_in_threadpool(worker.join)
