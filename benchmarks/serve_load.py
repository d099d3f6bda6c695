"""Load on `convlearn serve`: 1, 4 and 16 concurrent loopback clients (the official `openai` client, streaming)
against a tiny model, in one process with the server in a thread.

    python benchmarks/serve_load.py [--clients 1 4 16] [--requests 4] [--max-tokens 64] [--concurrency 2]
                                    [--queue 8] [--json OUT]

Per level: every client sends `--requests` streamed chat requests back to back (sampled, seeded, `max_tokens`
fixed, a sentence of chatterbot text as the prompt). Reported: requests ok / 503 / 429 / other failures; latency
(request to last byte) p50 and p95; time to first token p50 and p95; generated tokens per second over the level's
wall time (completion tokens from `usage`, summed over clients). The server's limits are the CLI's defaults except
where flags say: `--concurrency` generations at once, `--queue` waiting; beyond those a client gets 503 at once,
never a timeout; a level whose clients exceed concurrency + queue shows how many.
"""
from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

import openai


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run_level(url: str, key: str, clients: int, requests: int, max_tokens: int, prompts: list[str]) -> dict:
    out = {"ok": 0, "503": 0, "429": 0, "failed": 0, "latency": [], "ttft": [], "tokens": 0}
    lock = threading.Lock()

    def client(c: int):
        api = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=300)
        for r in range(requests):
            t0, first, usage = time.perf_counter(), None, None
            try:
                for chunk in api.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": prompts[(c * requests + r) % len(prompts)]}],
                        max_tokens=max_tokens, stream=True, temperature=1.0, seed=c * 1000 + r,
                        stream_options={"include_usage": True}):
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - t0
                    if chunk.usage is not None:
                        usage = chunk.usage
                with lock:
                    out["ok"] += 1
                    out["latency"].append(time.perf_counter() - t0)
                    out["ttft"].append(first if first is not None else time.perf_counter() - t0)
                    out["tokens"] += usage.completion_tokens if usage else 0
            except openai.APIStatusError as e:
                with lock:
                    out[str(e.status_code) if e.status_code in (503, 429) else "failed"] += 1
            except openai.APIError:
                with lock:
                    out["failed"] += 1
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": clients * requests, "ok": out["ok"], "503": out["503"],
            "429": out["429"], "failed": out["failed"], "wall_s": wall,
            "latency_p50_s": pct(out["latency"], 0.5), "latency_p95_s": pct(out["latency"], 0.95),
            "ttft_p50_s": pct(out["ttft"], 0.5), "ttft_p95_s": pct(out["ttft"], 0.95),
            "tokens_per_s": out["tokens"] / wall, "completion_tokens": out["tokens"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--queue", type=int, default=8)
    ap.add_argument("--model", default=None, help="model folder (default: a tiny Qwen2 twin built here)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from convlearn.serve.api import Limits
    from convlearn.serve.server import start_in_thread
    from convlearn.tiny import build_tiny_model, training_corpus
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    corpus = training_corpus()
    model = args.model or str(build_tiny_model("qwen2", work / "model", seed=0, texts=corpus))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    limits = Limits(concurrency=args.concurrency, queue=args.queue, queue_timeout_s=120,
                    rate_per_minute=100_000)
    server = start_in_thread(model, port, folder=work / "live", limits=limits, device="cpu")
    key = server.store.add_key("load", consent_default=True)
    prompts = [t[:200] for t in corpus if 20 < len(t) < 400][:200] or ["hello"]
    run_level(server.url, key, 1, 1, 4, prompts)  # warm-up
    rows = [run_level(server.url, key, c, args.requests, args.max_tokens, prompts) for c in args.clients]
    stored = server.store.counts()
    integrity = server.store.integrity_check()
    server.stop()
    print(f"convlearn serve load: tiny Qwen2 twin ({model}), CPU fp32, {args.concurrency} generations at once, "
          f"queue {args.queue}, {args.requests} streamed requests per client, max_tokens {args.max_tokens}\n")
    print("| clients | requests | ok | 503 | 429 | failed | latency p50 / p95 (s) | first token p50 / p95 (s) | "
          "tokens/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        f = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"| {r['clients']} | {r['requests']} | {r['ok']} | {r['503']} | {r['429']} | {r['failed']} | "
              f"{f(r['latency_p50_s'])} / {f(r['latency_p95_s'])} | {f(r['ttft_p50_s'])} / {f(r['ttft_p95_s'])} | "
              f"{r['tokens_per_s']:.0f} |")
    print(f"\nstore after the run: {stored['conversations']} conversations (ok requests + warm-up: "
          f"{sum(r['ok'] for r in rows) + 1}), integrity_check {integrity}")
    if args.json:
        Path(args.json).write_text(json.dumps({"levels": rows, "store": stored, "integrity": integrity,
                                               "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
