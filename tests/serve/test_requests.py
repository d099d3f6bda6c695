"""Requests as they arrive: sent twice, cut off by the client, hostile bodies, nulls, retries; each answered
before any work or stored once."""
from __future__ import annotations

import json
import time

import httpx
import pytest

from convlearn.serve.api import Limits
from convlearn.serve.server import start_in_thread
from helpers import free_port
from servehelpers import hello, post


def test_a_request_sent_twice_is_stored_once(live):
    """The same request twice through the server (what openai-python's retries send after a lost response):
    one conversation holding the second reply."""
    body = {"messages": hello("is this stored twice?"), "max_tokens": 8}
    first, again = post(live, body, "sharing"), post(live, body, "sharing")
    assert first.status_code == again.status_code == 200
    cid = first.headers["x-convlearn-conversation"]
    assert again.headers["x-convlearn-conversation"] == cid
    msgs = live.store.conversation(cid)["messages"]
    assert [m["content"] for m in msgs] == ["is this stored twice?", again.json()["choices"][0]["message"]["content"]]
    assert msgs[1]["response_id"] == again.json()["id"]


def test_a_client_that_hangs_up_frees_its_slot_and_stores_nothing(live):
    """A non-streamed request whose client goes away mid-generation: the generation stops (its slot is free long
    before the full reply would be done) and nothing is stored. The control: the same request, waited for,
    takes the full generation and is stored."""
    import socket
    body = json.dumps({"messages": hello("a long answer, please"), "max_tokens": 256, "temperature": 0}).encode()
    t0 = time.perf_counter()
    full = post(live, json.loads(body), "sharing")
    whole = time.perf_counter() - t0
    assert full.status_code == 200 and full.json()["choices"][0]["finish_reason"] == "length"
    assert whole > 0.5, whole  # long enough that a hang-up lands mid-generation
    cid = full.headers["x-convlearn-conversation"]
    assert live.store.delete_conversation(cid, live.store.key_for(live.keys["sharing"]))  # the same request again
    before = live.store.counts()
    gate = live.server.config.app.state.gate  # the app uvicorn runs
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {live.keys['sharing']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", int(live.url.rsplit(":", 1)[1])))
    sock.sendall(head + body)
    deadline = time.perf_counter() + 10
    while gate.running == 0 and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert gate.running == 1
    sock.close()
    gone = time.perf_counter()
    while gate.running and time.perf_counter() - gone < whole:
        time.sleep(0.01)
    freed = time.perf_counter() - gone
    assert gate.running == 0 and freed < 0.6 * whole, (freed, whole)
    time.sleep(0.3)
    assert live.store.counts() == before


# The red team's hostile bodies (issue #22): each is refused with a 4xx in OpenAI's shape before any generation,
# the server stays up and nothing is stored.
HOSTILE = {
    "deep nesting": (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    "lone surrogate": (b'{"messages": [{"role": "user", "content": "hi \\ud800 there"}]}', "lone surrogate"),
    "lone surrogate in user": (b'{"messages": [{"role": "user", "content": "hi"}], "user": "\\udfff"}',
                               "lone surrogate"),
    "seed over 64 bits": (json.dumps({"messages": hello(), "seed": 2**70}).encode(), "seed: must be a 64-bit"),
    "NaN temperature": (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "temperature"),
    "infinite top_p": (b'{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', "top_p"),
    "boolean temperature": (json.dumps({"messages": hello(), "temperature": True}).encode(), "temperature"),
    "non-string text part": (json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]})
                             .encode(), "text part"),
    "list stream_options": (json.dumps({"messages": hello(), "stream": True, "stream_options": [1]}).encode(),
                            "stream_options"),
    "string include_usage": (json.dumps({"messages": hello(), "stream_options": {"include_usage": "yes"}}).encode(),
                             "stream_options"),
    "string stream": (json.dumps({"messages": hello(), "stream": "yes"}).encode(), "stream: true or false"),
    "dict user": (json.dumps({"messages": hello(), "user": {"id": 1}}).encode(), "user"),
    "array body": (b"[1, 2]", "JSON object"),
    "message not an object": (json.dumps({"messages": ["hi"]}).encode(), "messages[0].role"),
    "stop of numbers": (json.dumps({"messages": hello(), "stop": [1, 2]}).encode(), "stop"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_chat_bodies_are_clean_4xx_and_store_nothing(live, name):
    body, says = HOSTILE[name]
    before = live.store.counts()
    r = post(live, body)
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
    err = r.json()["error"]
    assert says in err["message"] and err["type"] == "invalid_request_error", (name, err)
    assert live.store.counts() == before
    assert httpx.get(live.url + "/health").status_code == 200


def test_hostile_feedback_and_consent_bodies_are_clean_400s(live):
    auth = {"Authorization": f"Bearer {live.keys['private']}"}
    for body in ({"response_id": "x", "rating": ["up"]}, {"response_id": "x", "rating": {"a": 1}},
                 {"response_id": 5, "rating": "up"}, {"response_id": "x", "rating": "up", "text": {"t": 1}},
                 [1], b'{"rating": ' + b"[" * 50_000):
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = httpx.post(live.url + "/v1/feedback", content=content, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["message"], (body, r.text[:200])
    r = httpx.post(live.url + "/v1/conversations/nope/consent", content=b"[true]", headers=auth)
    assert r.status_code == 400 and "consent" in r.json()["error"]["message"]


def test_nulls_mean_not_set_and_a_vanishing_temperature_is_greedy(live):
    """Clients send null for parameters they leave unset; a temperature of 1e-39 would divide the logits into
    inf / NaN: below 1e-5 it is greedy decoding, as in vLLM (the control: temperature 0 gives the same text)."""
    nulls = post(live, {"messages": hello("nulls"), "max_tokens": None, "temperature": None, "top_p": None,
                        "stop": None, "seed": None, "user": None, "metadata": None, "stream_options": None})
    assert nulls.status_code == 200 and nulls.json()["usage"]["completion_tokens"] > 0
    tiny = post(live, {"messages": hello("greedy"), "max_tokens": 16, "temperature": 1e-39})
    zero = post(live, {"messages": hello("greedy"), "max_tokens": 16, "temperature": 0})
    assert tiny.status_code == zero.status_code == 200
    assert tiny.json()["choices"][0]["message"]["content"] == zero.json()["choices"][0]["message"]["content"]


def test_with_no_retry_window_only_marked_retries_are_merged(tiny_models, tmp_path):
    """`--retry-window 0`: the same request twice is two conversations, unless the client marks the second as
    its retry (openai-python's x-stainless-retry-count), which replaces the first reply."""
    server = start_in_thread(str(tiny_models["qwen2"]), free_port(), folder=tmp_path / "live", device="cpu",
                             limits=Limits(retry_window_s=0, max_tokens=8))
    try:
        headers = {"Authorization": f"Bearer {server.store.add_key('k', consent_default=True)}"}
        body = {"messages": hello("twice, on purpose"), "max_tokens": 4}

        def send(**extra):
            r = httpx.post(server.url + "/v1/chat/completions", json=body, headers={**headers, **extra}, timeout=60)
            assert r.status_code == 200
            return r.headers["x-convlearn-conversation"]
        first, second = send(), send()
        assert first != second
        assert send(**{"x-stainless-retry-count": "1"}) == second
        assert server.store.counts()["conversations"] == 2
    finally:
        server.stop()
