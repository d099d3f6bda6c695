"""A store that cannot take writes: refused at start-up in one line (read-only, disk full), and, when it fills
while the server runs, a 507 in OpenAI's shape or a stream's error event followed by [DONE], never a cut
stream or a reply the client may think was kept."""
import json
import os
import subprocess
import sys

import httpx
import pytest

from convlearn.serve.api import Limits
from convlearn.serve.server import start_in_thread
from convlearn.store import Store
from helpers import cli_here, free_port


def test_a_read_only_store_is_one_line_for_keys_and_serve(tmp_path, tiny_models, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a URI store must create nothing where it runs (it once made ./file:/...)
    db = tmp_path / "live" / "store.sqlite"
    Store(f"sqlite:///{db}").add_key("k")
    read_only = f"sqlite:///file:{db}?mode=ro&uri=true"  # a real read-only open (root ignores file modes)
    done = cli_here("keys", "add", "other", "--store", read_only)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr == "convlearn: error: the store cannot take writes: attempt to write a readonly database\n"
    serve = subprocess.run([sys.executable, "-m", "convlearn", "serve", str(tiny_models["qwen2"]), "--store",
                            read_only, "--dir", str(tmp_path / "live"), "--port", str(free_port())],
                           capture_output=True, text=True, timeout=120)
    assert serve.returncode == 2 and "readonly database" in serve.stderr and "Traceback" not in serve.stderr
    assert cli_here("keys", "add", "other", "--dir", tmp_path / "live").returncode == 0  # the control: writable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live"]


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs (root mounts one; where it cannot, the disk-full tests skip and say so)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here to fill a disk: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder) -> None:
    """Fill the disk to the last byte (smaller and smaller writes, so no slack is left)."""
    with open(folder / "ballast", "ab", buffering=0) as fh:
        for size in (1 << 20, 65536, 4096, 512, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                pass


def test_a_disk_that_fills_mid_reply_is_507_or_an_error_event_and_a_full_one_refuses_start_up(small_disk, tiny_models):
    """The disk fills while a reply is generated (after the request was admitted): a plain request gets 507 in
    OpenAI's shape, a stream an error event then [DONE]; nothing is stored. Then, with no room at all, a request
    is refused before generation, and the server refuses to start on that disk."""
    import threading
    import time
    folder = small_disk / "live"
    server = start_in_thread(str(tiny_models["qwen2"]), free_port(), folder=folder, device="cpu",
                             limits=Limits(max_tokens=256))
    gate = server.server.config.app.state.gate
    body = {"messages": [{"role": "user", "content": "a long answer, please"}], "max_tokens": 256, "temperature": 0}
    try:
        secret = server.store.add_key("k", consent_default=True)
        auth = {"Authorization": f"Bearer {secret}"}
        ok = httpx.post(server.url + "/v1/chat/completions", headers=auth, timeout=60, json=body)
        assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"  # the control
        assert server.store.delete_conversation(ok.headers["x-convlearn-conversation"], server.store.key_for(secret))
        before = server.store.counts()
        got = {}
        plain = threading.Thread(target=lambda: got.update(r=httpx.post(
            server.url + "/v1/chat/completions", headers=auth, timeout=60, json={**body, "user": "plain"})))
        plain.start()
        deadline = time.time() + 30
        while gate.running == 0 and time.time() < deadline:
            time.sleep(0.005)
        _fill(small_disk)  # mid-generation: the request was admitted (its rate row written) before
        plain.join(60)
        r = got["r"]
        assert r.status_code == 507 and r.json()["error"]["code"] == "store_full", r.text[:300]
        os.unlink(small_disk / "ballast")
        with httpx.stream("POST", server.url + "/v1/chat/completions", headers=auth, timeout=60,
                          json={**body, "stream": True}) as s:
            events = []
            for line in s.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 2:  # generating: fill the disk now
                        _fill(small_disk)
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "store_full", events[-3:]
        assert server.store.counts() == before
        r = httpx.post(server.url + "/v1/chat/completions", headers=auth, timeout=60, json=body)
        assert r.status_code == 507 and r.json()["error"]["type"] == "server_error", r.text[:300]
    finally:
        server.stop()
    serve = subprocess.run([sys.executable, "-m", "convlearn", "serve", str(tiny_models["qwen2"]), "--dir",
                            str(folder), "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert serve.returncode == 2 and "bytes free" in serve.stderr and "Traceback" not in serve.stderr
