"""Two `convlearn serve` replicas and `convlearn learn` on one real PostgreSQL, as a team deploys them: under
streaming load every reply is stored once, both replicas swap to the version the learner promotes, and a key's
rate limit is enforced once for both, not once per replica."""
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import openai
import pytest

from convlearn.store import Store
from helpers import free_port
from learnstore import chats, learn_config

RATE = 40  # requests per key per minute, for both replicas together
# varied user turns (the flood guard would drop 40 variants of one sentence), each made unique by its tag
LINES = [pairs[0][0] for pairs in chats(40)]


def _serve(model, folder, url, port) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "convlearn", "serve", str(model), "--dir", str(folder), "--store",
                             url, "--port", str(port), "--poll", "0.2", "--rate-limit", str(RATE), "--concurrency",
                             "2", "--queue", "16", "--max-tokens", "32", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the replica exited: {proc.stdout.read()[-2000:]}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{base} never became healthy")


@pytest.mark.slow
def test_two_replicas_and_a_learner_on_one_postgresql(tmp_path, tiny_models, pg_url):
    folder = tmp_path / "live"
    store = Store(pg_url)
    load_keys = [store.add_key(f"load{i}", consent_default=True) for i in range(4)]
    limited = store.add_key("limited")
    ports = [free_port(), free_port()]
    procs = [_serve(tiny_models["qwen2"], folder, pg_url, p) for p in ports]
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    replies, errors = {}, []
    try:
        for base, proc in zip(bases, procs):
            _wait_healthy(base, proc)

        def streamer(i, wave, n):  # each thread: its own key, alternate replicas, streamed, unique prompts
            for j in range(n):
                c = openai.OpenAI(base_url=bases[(i + j) % 2] + "/v1", api_key=load_keys[i % 4], max_retries=0,
                                  timeout=120)
                prompt = f"wave {wave} thread {i} request {j}: {LINES[(10 * wave + 3 * i + j) % len(LINES)]}"
                try:
                    chunks = list(c.chat.completions.create(model="x", messages=[{"role": "user", "content": prompt}],
                                                            max_tokens=12, stream=True))
                    replies[prompt] = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
                except Exception as e:  # noqa: BLE001 - any failure is the finding
                    errors.append(repr(e))

        def wave(w, n):
            threads = [threading.Thread(target=streamer, args=(i, w, n)) for i in range(4)]
            for t in threads:
                t.start()
            return threads
        for t in wave(0, 5):
            t.join()
        cfg = learn_config(tmp_path, tiny_models["qwen2"], folder, train={"max_steps": 4},
                           eval={"original": None}, learn={"store": pg_url, "per_key_cap": 1000, "gate_fraction": 0.2,
                                                           "gate": {"require_heldout": False}})
        learner = subprocess.Popen([sys.executable, "-m", "convlearn", "learn", str(cfg), "--once"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        during = wave(1, 3)  # load goes on while the learner trains, gates and promotes
        out, _ = learner.communicate(timeout=600)
        for t in during:
            t.join()
        assert learner.returncode == 0, out[-3000:]
        assert '"status": "promoted"' in out and pg_url.split("@")[0].split(":")[-1] not in out  # no password
        deadline = time.time() + 60
        while time.time() < deadline and {httpx.get(b + "/health").json()["version"] for b in bases} != {"v1"}:
            time.sleep(0.2)
        assert [httpx.get(b + "/health").json()["version"] for b in bases] == ["v1", "v1"]
        for t in wave(2, 2):  # both replicas answer with the promoted version
            t.join()
        # one key's limit, both replicas taking its requests in turn
        codes = Counter(httpx.post(bases[i % 2] + "/v1/chat/completions", timeout=120,
                                   headers={"Authorization": f"Bearer {limited}"},
                                   json={"messages": [{"role": "user", "content": f"limit {i}"}],
                                         "max_tokens": 1}).status_code for i in range(RATE + 10))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
    assert not errors, errors[:3]
    assert codes == {200: RATE, 429: 10}
    assert len(replies) == 4 * (5 + 3 + 2)
    convs = store.consented_messages(0)
    by_prompt = Counter(c["messages"][0]["content"] for c in convs)
    assert {p: by_prompt[p] for p in replies} == {p: 1 for p in replies}  # every reply stored once
    stored = {c["messages"][0]["content"]: c["messages"][1]["content"] for c in convs}
    assert all(stored[p] == text for p, text in replies.items())
    late = [store.conversation(c["id"])["messages"][1]["model_version"] for c in convs
            if c["messages"][0]["content"].startswith("wave 2")]
    assert late == ["v1"] * 8
