"""The server, through clients we did not write: the official `openai` client, raw HTTP (httpx) for what it
will not send, a headless chromium for the page; the store checked after each."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from convlearn.serve.api import Limits
from convlearn.serve.server import start_in_thread
from convlearn.store import Store, Version, default_url, export_conversations
from helpers import free_port
from servehelpers import client, hello, post


def reference_reply(model_dir, messages, max_new_tokens) -> tuple[str, int]:
    """What transformers' own greedy `generate` answers, with the model's chat template and end-of-turn ids."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    chat = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    eos = model.generation_config.eos_token_id
    out = model.generate(**chat, max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=eos, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    return tok.decode(out[0, chat["input_ids"].shape[1]:], skip_special_tokens=True), chat["input_ids"].shape[1]


def test_openai_client_plain_and_streamed_match_transformers_generate(live, tiny_models):
    msgs = hello("what is a compiler?")
    expected, prompt_len = reference_reply(tiny_models["qwen2"], msgs, 24)
    r = client(live).chat.completions.create(model="anything", messages=msgs, max_tokens=24, temperature=0)
    assert r.choices[0].message.content == expected
    assert r.model == "v0" and r.object == "chat.completion"
    assert r.usage.prompt_tokens == prompt_len and 1 <= r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == prompt_len + r.usage.completion_tokens
    assert r.choices[0].finish_reason == ("length" if r.usage.completion_tokens == 24 else "stop")

    chunks = list(client(live).chat.completions.create(model="anything", messages=msgs, max_tokens=24,
                                                       temperature=0, stream=True,
                                                       stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # it streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens

    # a stop string ends the reply before it; sampling with a seed repeats itself
    cut = expected[3:6]
    stopped = client(live).chat.completions.create(model="m", messages=msgs, max_tokens=24, temperature=0, stop=[cut])
    assert stopped.choices[0].message.content == expected[:expected.index(cut)]
    assert stopped.choices[0].finish_reason == "stop"
    a, b = (client(live).chat.completions.create(model="m", messages=msgs, max_tokens=12, temperature=0.9,
                                                 top_p=0.95, seed=7).choices[0].message.content for _ in range(2))
    assert a == b


def test_keys_required_except_health(live):
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=live.url + "/v1", api_key="cl-wrong", max_retries=0).models.list()
    assert e.value.body["code"] == "invalid_api_key"
    assert httpx.get(live.url + "/v1/models").status_code == 401
    assert httpx.get(live.url + "/health").json()["status"] == "ok"
    assert [m.id for m in client(live).models.list().data] == ["v0"]
    assert "convlearn" in httpx.get(live.url + "/").text


def test_bad_requests_are_clear_400s_and_store_nothing(live):
    before = live.store.counts()
    with pytest.raises(openai.BadRequestError) as e:
        client(live).chat.completions.create(model="m", messages=[{"role": "wizard", "content": "hi"}])
    assert "messages[0].role" in e.value.body["message"] and e.value.body["param"] == "messages[0].role"
    cases = {
        b'{"messages": [{"role": "user", "content": "hi"}': "not JSON",
        b'{"messages": [{"role": "user", "content": "caf\xe9"}]}': "not UTF-8",
        json.dumps({"messages": []}).encode(): "messages: must be a non-empty list",
        json.dumps({"messages": [{"role": "user", "content": "  "}]}).encode(): "messages[0].content",
        json.dumps({"messages": hello(), "max_tokens": 100000}).encode():
            "max_tokens: must be an integer from 1 to 256",
        json.dumps({"messages": hello(), "temperature": 9}).encode(): "temperature",
        json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}).encode(): "last message must be the user",
        json.dumps({"messages": hello(), "user": {"id": 1}}).encode(): "user: a string of at most 200",
        json.dumps({"messages": hello(), "user": "u" * 201}).encode(): "user: a string of at most 200",
    }
    for body, says in cases.items():
        r = post(live, body)
        assert r.status_code == 400, (body, r.text)
        assert says in r.json()["error"]["message"], (says, r.json())
    r = post(live, {"messages": hello("word " * 5000), "max_tokens": 200})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "context of 4096 tokens" in r.json()["error"]["message"]
    r = post(live, b'{"messages": "' + b"x" * 10_000_000 + b'"}')
    assert r.status_code == 413 and "1,000,000" in r.json()["error"]["message"]
    r = httpx.post(live.url + "/v1/chat/completions", timeout=60, headers={"Authorization": f"Bearer "
                   f"{live.keys['private']}"}, content=(b"x" * 65536 for _ in range(40)))  # chunked: no length
    assert r.status_code == 413
    assert live.store.counts() == before


def _get(live, path, key="private") -> httpx.Response:
    return httpx.get(live.url + path, timeout=60, headers={"Authorization": f"Bearer {live.keys[key]}"})


def test_each_key_lists_its_own_conversations_and_only_admin_sees_store_figures(live):
    """GET /v1/conversations: the caller's conversations only, newest first, paged; /v1/status and /v1/versions
    show the store's totals, the server's load and the gate's figures to an admin key only. Each restriction is
    checked against the admin's view, where the figure is present."""
    c = client(live, "sharing")
    first = c.chat.completions.create(model="m", messages=hello("my first question"), max_tokens=4)
    second = c.chat.completions.create(model="m", messages=hello("my second question"), max_tokens=4)
    client(live, "private").chat.completions.create(model="m", messages=hello("a private one"), max_tokens=4)
    mine = _get(live, "/v1/conversations?limit=100", "sharing").json()
    ids = [row["id"] for row in mine["data"]]
    assert ids[:2] == [second.model_extra["conversation_id"], first.model_extra["conversation_id"]]
    assert mine["has_more"] is False
    assert mine["data"][0]["title"] == "my second question" and mine["data"][0]["consent"] is True
    theirs = {row["id"] for row in _get(live, "/v1/conversations?limit=100", "private").json()["data"]}
    assert not theirs & set(ids) and "a private one" in {row["title"] for row in
                                                        _get(live, "/v1/conversations", "private").json()["data"]}
    page = _get(live, "/v1/conversations?limit=1", "sharing").json()
    assert [r["id"] for r in page["data"]] == ids[:1] and page["has_more"] is True
    nxt = _get(live, f"/v1/conversations?limit=1&before={page['data'][0]['updated']}", "sharing").json()
    assert [r["id"] for r in nxt["data"]] == ids[1:2]
    for bad in ("limit=0", "limit=101", "limit=ten", "before=yesterday"):
        r = _get(live, "/v1/conversations?" + bad, "sharing")
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", (bad, r.text)
    assert httpx.get(live.url + "/v1/conversations").status_code == 401

    user, admin = _get(live, "/v1/status").json(), _get(live, "/v1/status", "admin").json()
    assert set(user) == {"serving", "key", "yours"} and user["key"] == "private"
    assert user["yours"] == live.store.counts(live.store.key_for(live.keys["private"]))
    assert admin["store"] == live.store.counts() and {"running", "waiting", "limits"} <= set(admin)
    live.store.record_version(Version("v9", "rejected", "/nowhere", parent="v0", seq_from=0, seq_to=5,
                                      conversations=3, round=9, gate={"reasons": ["learning"]}))
    row = {v["id"]: v for v in _get(live, "/v1/versions").json()["data"]}["v9"]
    full = {v["id"]: v for v in _get(live, "/v1/versions", "admin").json()["data"]}["v9"]
    assert set(row) == {"id", "status", "parent", "created", "round"}
    assert full["conversations"] == 3 and full["gate"] == {"reasons": ["learning"]} and "path" not in full


def test_the_page_cannot_be_framed(live):
    r = httpx.get(live.url + "/")
    assert r.status_code == 200 and r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "x-frame-options" not in httpx.get(live.url + "/health").headers  # the control: only the page is set


def test_one_chat_is_one_conversation_with_the_answering_version(live):
    c = client(live)
    msgs = hello("first question")
    r1 = c.chat.completions.create(model="m", messages=msgs, max_tokens=8, temperature=0)
    msgs += [{"role": "assistant", "content": r1.choices[0].message.content}, {"role": "user", "content": "and?"}]
    r2 = c.chat.completions.create(model="m", messages=msgs, max_tokens=8, temperature=0)
    cid = r2.model_extra["conversation_id"]
    assert cid == r1.model_extra["conversation_id"]
    conv = live.store.conversation(cid)
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "user", "assistant"]
    assert [m["response_id"] for m in conv["messages"] if m["role"] == "assistant"] == [r1.id, r2.id]
    assert {m["model_version"] for m in conv["messages"] if m["role"] == "assistant"} == {"v0"}
    # the same history from another key is another conversation
    other = client(live, "sharing").chat.completions.create(model="m", messages=msgs, max_tokens=8, temperature=0)
    assert other.model_extra["conversation_id"] != cid


def test_consent_default_override_and_delete(live):
    def ids_readable():
        return {c["id"] for c in live.store.consented_messages(after=0)}
    private = client(live).chat.completions.create(model="m", messages=hello("secret plans"), max_tokens=4)
    cid_private = private.model_extra["conversation_id"]
    assert cid_private not in ids_readable()  # key default: off
    opted = client(live).chat.completions.create(model="m", messages=hello("share this"), max_tokens=4,
                                                 metadata={"consent": "true"})
    cid_opted = opted.model_extra["conversation_id"]
    assert cid_opted in ids_readable()
    by_header = post(live, {"messages": hello("header consent"), "max_tokens": 4}, **{"X-Convlearn-Consent": "yes"})
    assert by_header.json()["conversation_id"] in ids_readable()
    shared = client(live, "sharing").chat.completions.create(model="m", messages=hello("shared by default"),
                                                             max_tokens=4)
    cid_shared = shared.model_extra["conversation_id"]
    assert cid_shared in ids_readable()
    # withdrawn, then deleted (with its feedback); another key can do neither
    auth = {"Authorization": f"Bearer {live.keys['sharing']}"}
    assert httpx.post(f"{live.url}/v1/conversations/{cid_shared}/consent", json={"consent": False},
                      headers=auth).json() == {"id": cid_shared, "consent": False}
    assert cid_shared not in ids_readable()
    assert httpx.post(f"{live.url}/v1/feedback", headers={"Authorization": f"Bearer {live.keys['private']}"},
                      json={"response_id": opted.id, "rating": "up", "text": "good"}).json() == {"ok": True}
    before = live.store.counts()
    assert httpx.delete(f"{live.url}/v1/conversations/{cid_opted}", headers=auth).status_code == 404
    assert httpx.delete(f"{live.url}/v1/conversations/{cid_opted}",
                        headers={"Authorization": f"Bearer {live.keys['private']}"}).json()["deleted"] is True
    assert live.store.conversation(cid_opted) is None and cid_opted not in ids_readable()
    after = live.store.counts()
    assert (before["conversations"] - after["conversations"], before["messages"] - after["messages"],
            before["feedback"] - after["feedback"]) == (1, 2, 1)
    r = post(live, {"messages": hello(), "metadata": {"consent": "maybe"}})
    assert r.status_code == 400 and "consent" in r.json()["error"]["message"]


def test_feedback(live):
    r = client(live).chat.completions.create(model="m", messages=hello("rate me"), max_tokens=4)
    auth = {"Authorization": f"Bearer {live.keys['private']}"}
    n = live.store.counts()["feedback"]
    assert httpx.post(f"{live.url}/v1/feedback", json={"response_id": r.id, "rating": "down"},
                      headers=auth).status_code == 200
    assert httpx.post(f"{live.url}/v1/feedback", json={"response_id": "chatcmpl-none", "rating": "up"},
                      headers=auth).status_code == 404
    assert httpx.post(f"{live.url}/v1/feedback", json={"response_id": r.id, "rating": "meh"},
                      headers=auth).status_code == 400
    assert live.store.counts()["feedback"] == n + 1


def test_export_round_trips_through_our_readers(live, tmp_path):
    from convlearn.config.data import SourceConfig
    from convlearn.data.records import DataStats
    from convlearn.data.stream import read_source
    stored = {c["id"]: [(m["role"], m["content"]) for m in c["messages"]]
              for c in live.store.consented_messages(after=0)}
    assert stored
    for fmt in ("lmsys", "sharegpt"):
        out = tmp_path / f"{fmt}.jsonl"
        assert export_conversations(live.store, out, fmt) == len(stored)
        stats = DataStats()
        read = list(read_source(SourceConfig(path=str(out)), stats))
        assert stats.format == fmt and not stats.skipped
        # the readers trim the whitespace around a message (normalization); the tiny model's replies can start with it
        assert sorted([(m.role, m.content) for m in r.messages] for r in read) == \
            sorted([(role, text.strip()) for role, text in conv] for conv in stored.values())


def test_overload_gets_503_and_rate_limit_429_never_a_hang(tiny_models, tmp_path):
    server = start_in_thread(str(tiny_models["qwen2"]), free_port(), folder=tmp_path, device="cpu",
                             limits=Limits(concurrency=1, queue=1, queue_timeout_s=30, max_tokens=512,
                                           rate_per_minute=1000))
    key = server.store.add_key("k", consent_default=True)
    results: list = []

    def one(i):
        t = time.time()
        try:
            r = httpx.post(server.url + "/v1/chat/completions", timeout=120, headers={"Authorization": f"Bearer {key}"},
                           json={"messages": hello(f"load {i}"), "max_tokens": 300, "temperature": 1.0, "seed": i})
            results.append((r.status_code, r.json().get("error", {}).get("code"), time.time() - t))
        except Exception as e:  # a timeout would land here and fail the test
            results.append((None, repr(e), time.time() - t))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    codes = Counter(r[0] for r in results)
    assert set(codes) <= {200, 503} and codes[200] >= 2 and codes[503] >= 1, results
    assert all(r[1] == "overloaded" for r in results if r[0] == 503)
    assert server.store.counts()["conversations"] == codes[200]
    server.stop()

    limited = start_in_thread(str(tiny_models["qwen2"]), free_port(), folder=tmp_path / "rate", device="cpu",
                              limits=Limits(rate_per_minute=3))
    key = limited.store.add_key("k")
    statuses = [httpx.post(limited.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"messages": hello(), "max_tokens": 2}, timeout=60) for _ in range(4)]
    assert [s.status_code for s in statuses] == [200, 200, 200, 429]
    assert statuses[-1].json()["error"]["code"] == "rate_limit_exceeded" and statuses[-1].headers["retry-after"]
    limited.stop()


@pytest.mark.slow
def test_kill_9_while_streaming_loses_no_complete_reply_and_stores_none_twice(tiny_models, tmp_path):
    port = free_port()
    store = Store(default_url(tmp_path))
    key = store.add_key("k", consent_default=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "convlearn", "serve", str(tiny_models["qwen2"]), "--dir",
                             str(tmp_path), "--port", str(port), "--device", "cpu", "--concurrency", "6",
                             "--max-tokens", "3000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    state, errors = {}, {}  # client -> (response id, text, finished) / the error that cut it

    def stream(i, max_tokens):
        c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)
        rid, text = None, ""
        try:  # a stream cut by the kill raises here
            for chunk in c.chat.completions.create(model="m", messages=hello(f"client {i}"), max_tokens=max_tokens,
                                                   stream=True, temperature=1.0, seed=i):
                rid = chunk.id
                if chunk.choices and chunk.choices[0].finish_reason:
                    state[i] = (rid, text, True)
                    return
                text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
                state[i] = (rid, text, False)
        except (openai.APIConnectionError, httpx.HTTPError) as e:
            errors[i] = e
    short = [threading.Thread(target=stream, args=(i, 6)) for i in range(3)]
    long = [threading.Thread(target=stream, args=(i, 3000)) for i in range(3, 6)]
    for t in short + long:
        t.start()
    for t in short:
        t.join(60)
    # kill while a long reply is mid-stream; a sampled reply can end early at the end-of-turn token, so another
    # long client (another seed) starts whenever fewer than three are streaming
    seeds = iter(range(6, 40))
    deadline = time.time() + 60
    while not any(i >= 3 and not finished and text for i, (_, text, finished) in list(state.items())):
        assert time.time() < deadline, (state, errors)
        if sum(t.is_alive() for t in long) < 3:
            long.append(threading.Thread(target=stream, args=(next(seeds), 3000)))
            long[-1].start()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for t in long:
        t.join(30)
    finished = {v[0] for v in state.values() if v[2]}
    cut = {v[0] for v in state.values() if not v[2]}
    assert len(finished) >= 3 and cut and set(errors) >= {i for i, v in state.items() if not v[2]}, (state, errors)

    store = Store(default_url(tmp_path))
    assert store.integrity_check() == "ok"
    stored = Counter(m["response_id"] for c in store.consented_messages(after=0)
                     for m in store.conversation(c["id"])["messages"] if m["response_id"])
    assert finished <= set(stored)                       # every reply a client received in full is stored
    assert not (cut & set(stored))                       # a reply cut short is stored nowhere
    assert max(stored.values()) == 1                     # none twice
    assert store.counts()["conversations"] == len(stored)
    texts = {v[0]: v[1] for v in state.values() if v[2]}
    for c in store.consented_messages(after=0):
        last = c["messages"][-1]
        rid = store.conversation(c["id"])["messages"][-1]["response_id"]
        assert last["content"] == texts[rid]
    # and it serves again from the same store
    again = start_in_thread(str(tiny_models["qwen2"]), free_port(), folder=tmp_path, device="cpu")
    assert again.store.counts()["conversations"] == len(stored)
    again.stop()


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.skipif(_chromium() is None, reason="chromium and chromedriver are not installed (`make browser` "
                                                "installs Debian's; it needs root or sudo)")
def test_web_page_in_headless_chromium(live):
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    browser, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    # the page rebuilds its lists after each action: an element found just before a rebuild is stale, so look again
    wait = WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,))
    try:
        driver.get(live.url + "/")
        driver.find_element(By.ID, "key").send_keys(live.keys["private"], Keys.TAB)
        wait.until(lambda d: d.find_element(By.ID, "serving").text == "v0")
        driver.find_element(By.ID, "consent").click()           # learn from this one
        box = driver.find_element(By.ID, "input")
        box.send_keys("hello from the browser", Keys.ENTER)
        answer = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".assistant[data-done='1']"))
        # textContent, not .text: WebDriver's .text collapses whitespace runs and the tiny model's replies have them
        shown = answer.find_element(By.CLASS_NAME, "text").get_attribute("textContent")
        convs = [c for c in live.store.consented_messages(after=0)
                 if c["messages"][0]["content"] == "hello from the browser"]
        assert len(convs) == 1
        stored = live.store.conversation(convs[0]["id"])
        assert stored["consent"] is True and stored["messages"][1]["content"] == shown
        answer.find_element(By.CSS_SELECTOR, "button[data-rating='up']").click()
        wait.until(lambda d: "chosen" in answer.find_element(By.CSS_SELECTOR, "button[data-rating='up']")
                   .get_attribute("class"))
        driver.find_element(By.ID, "consent").click()           # withdrawn
        wait.until(lambda d: "will not be learned" in d.find_element(By.ID, "status").text)
        assert live.store.conversation(convs[0]["id"])["consent"] is False
        assert "answered by v0" in answer.text
        # after a reload the chat is gone from the page, but the key's conversations list still reaches it
        driver.refresh()
        cid = convs[0]["id"]
        mine = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#conversations tr[data-id='{cid}']"))[0]
        assert mine.text.startswith("hello from the browser (2 messages) no")
        mine.find_element(By.CSS_SELECTOR, "button.toggle").click()        # allowed again, from the list
        wait.until(lambda d: live.store.conversation(cid)["consent"] is True)
        mine = wait.until(lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, f"#conversations tr[data-id='{cid}']")
                                     if "yes" in r.find_element(By.CLASS_NAME, "consent").text])[0]
        mine.find_element(By.CSS_SELECTOR, "button.delete").click()
        wait.until(lambda d: live.store.conversation(cid) is None)
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, f"#conversations tr[data-id='{cid}']"))
        # the model panel: a rejected candidate with its gate figures and why (the shape learn/gate.py records)
        live.store.record_version(Version("v1", "rejected", "/nowhere", parent="v0", seq_from=0, seq_to=9,
                                          conversations=7, round=1, gate={
                                       "reasons": ["learning: +4.0% over the bound +0.0%"],
                                       "checks": {"learning": {"status": "fail", "what": "perplexity, relative change",
                                                               "value": 0.04, "low": 0.01, "high": 0.07, "bound": 0.0,
                                                               "unit": "relative"},
                                                  "probes": {"status": "not measured"}},
                                       "figures": {"current": {"conversation_ppl": 25.0, "original_ppl": 150.0},
                                                   "candidate": {"conversation_ppl": 26.0, "original_ppl": 151.0}}}))
        def v1_row(d):
            return [r for r in d.find_elements(By.CSS_SELECTOR, "#versions tr.rejected") if r.text.startswith("v1 ")]
        row = wait.until(v1_row)[0]
        assert row.text.strip() == "v1 rejected"  # this key is no admin: the timeline, not the figures
        key = driver.find_element(By.ID, "key")
        key.clear()
        key.send_keys(live.keys["admin"], Keys.TAB)
        row = wait.until(lambda d: [r for r in v1_row(d) if "conversations" in r.text])[0]
        assert row.text.startswith("v1 rejected 7 conversations (messages 0–9)")
        assert "learning fail +4.0% [+1.0%, +7.0%] (bound +0.0%)" in row.text and "probes not measured" in row.text
        assert "ppl 25.0 → 26.0" in row.text and "why rejected: learning: +4.0%" in row.text
    finally:
        driver.quit()
