"""Admission: how many generations run at once, how many wait and for how long, and each key's request rate.
A request is told at once (503, 429) rather than left hanging."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi.responses import StreamingResponse

from .protocol import ApiError


@dataclass
class Limits:
    max_body_bytes: int = 1_000_000       # request body
    max_tokens: int = 512                 # the largest max_tokens a request may ask for
    concurrency: int = 2                  # generations at once
    queue: int = 8                        # requests waiting for a slot; more get 503 at once
    queue_timeout_s: float = 30.0         # a request waiting longer gets 503
    rate_per_minute: int = 120            # requests per key per minute, across every server on the store; 429
    retry_window_s: float = 600.0         # the same request (key + history) again within this is a retry: it
    #                                       replaces the reply it repeats (0: only requests a client marks retries)


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
    """Each key's requests per minute, counted in the store (a sliding 60 s window), so every replica on one
    store enforces the same single limit."""

    def __init__(self, store, per_minute: int):
        self.store, self.per_minute = store, per_minute

    def check(self, key) -> None:
        wait = self.store.take_rate(key, self.per_minute)
        if wait is not None:
            raise ApiError(429, f"rate limit: {self.per_minute} requests per minute for this key", "rate_limit_error",
                           code="rate_limit_exceeded", headers={"Retry-After": str(int(wait) + 1)})
