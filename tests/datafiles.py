"""Fixture files in the real schemas, good and malformed rows of every skip reason, with expected counts."""
from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


LMSYS_EXPECTED = {
    "conversations": 5, "messages": 10,
    "skipped": {"moderation": 1, "invalid_json": 1, "not_an_object": 1, "missing_field": 1, "wrong_type": 1,
                "unknown_role": 1, "no_exchange": 1, "empty": 1, "duplicate": 1},
    "scrubbed": {"email": 1, "api_key": 1, "phone": 1, "ip_address": 1},
    "placeholders": {"NAME_n": 2},
    "edits": {"same_role_merged": 2, "leading_assistant_dropped": 1, "empty_message_dropped": 1},
}


def lmsys_rows() -> list:
    """Rows of an LMSYS-Chat-1M dump; strings are raw lines (bad JSON)."""
    def row(cid, conv, lang="English", flagged=False, redacted=False):
        return {"conversation_id": cid, "model": "vicuna-13b", "conversation": conv, "turn": len(conv) // 2,
                "language": lang, "redacted": redacted,
                "openai_moderation": [{"categories": {"harassment": flagged},
                                       "category_scores": {"harassment": 0.9 if flagged else 0.01},
                                       "flagged": flagged}
                                      for _ in conv]}
    good = row("a1", _msgs(("user", "Hi, I am NAME_1. Who are you?"), ("assistant", "Hello NAME_1, I am a bot.")),
               redacted=True)
    return [
        good,
        row("a2", _msgs(("user", "Tell me a joke."), ("user", "A short one."), ("assistant", "Why did..."),
                        ("user", "  "), ("assistant", "Another?"))),                      # merged + empty msg
        row("a3", _msgs(("user", "bad words"), ("assistant", "no")), flagged=True),       # moderation
        '{"conversation_id": "broken", ',                                                  # invalid_json
        "[1, 2, 3]",                                                                       # not_an_object
        {"conversation_id": "a6", "language": "English"},                                  # missing_field
        {"conversation_id": "a7", "conversation": "user: hi"},                             # wrong_type
        row("a8", _msgs(("user", "hi"), ("narrator", "the end"))),                        # unknown_role
        row("a9", _msgs(("user", "only a question?"))),                                    # no_exchange
        row("a10", _msgs(("user", "   "), ("assistant", "\n\t"))),                         # empty
        row("a11", _msgs(("user", "hi, i am  NAME_1.   who are you?"),
                         ("assistant", "Hello NAME_1, I am a bot."))),                     # duplicate of a1
        row("a12", _msgs(("user", "¿Hola, qué tal?"), ("assistant", "Bien, gracias.")), lang="Spanish"),
        row("a13", _msgs(("user", "Mail me at jane.doe@example.com, key sk-abcdefghijklmnopqrstuvwx123, "
                                  "call +1 415 555 0100, server 192.168.1.20"),
                         ("assistant", "I will not store those."))),
        row("a14", _msgs(("assistant", "Welcome!"), ("user", "Thanks. What's 2+2?"), ("assistant", "4."))),
    ]


SHAREGPT_EXPECTED = {"conversations": 4, "skipped": {"unknown_role": 1, "missing_field": 1, "wrong_type": 1,
                                                      "not_an_object": 1}}


def sharegpt_rows() -> list:
    return [
        {"id": "s1", "conversations": [
            {"from": "human", "value": "How do I print in Python?"},
            {"from": "gpt", "value": '<div class="markdown prose"><p>Use <code>print</code>:</p>'
                                     "<pre><code>print(&quot;hi&quot;)</code></pre><ol><li>one</li>"
                                     "<li>two</li></ol></div>"}]},
        {"id": "s2", "conversations": [{"from": "gpt", "value": "Hello! How can I help?"},
                                       {"from": "human", "value": "Name a colour."},
                                       {"from": "chatgpt", "value": "Blue."}]},
        {"id": "s3", "conversations": [{"from": "system", "value": "You are terse."},
                                       {"from": "user", "value": "Capital of France?"},
                                       {"from": "bing", "value": "Paris."}]},
        {"id": "s4", "conversations": [{"from": "human", "value": "x"}, {"from": "narrator", "value": "y"}]},
        {"id": "s5"},
        {"id": "s6", "conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "z"}]},
        {"id": "s7", "conversations": [{"from": "human", "value": "a"}, {"from": "bard", "value": "b"},
                                       {"from": "human", "value": "c"}, {"from": "model", "value": "d"}]},
        "not a record",
    ]


SHARECHAT_EXPECTED = {"conversations": 2, "skipped": {"missing_field": 1, "wrong_type": 1,
                                                       "no_exchange": 1, "unknown_role": 1},
                      "placeholders": {"<REDACTED>": 1, "<URL>": 1}}

SHARECHAT_FIELDS = ["platform", "url", "turns_count", "message_index", "role", "plain_text",
                    "detected_language_final"]


def sharechat_rows() -> list[dict]:
    def m(url, idx, role, text, platform="claude"):
        return {"platform": platform, "url": url, "turns_count": 2, "message_index": idx, "role": role,
                "plain_text": text, "detected_language_final": "en"}
    return [
        m("https://share/a", 1, "assistant", "It is <REDACTED>'s garden, see <URL>."),
        m("https://share/a", 0, "user", "Whose garden is it?"),
        m("https://share/b", 0, "user", "Hello?"),
        m("", 0, "user", "no url"),
        m("https://share/c", "x", "user", "bad index"),
        m("https://share/d", 0, "user", "q"), m("https://share/d", 1, "tool", "r"),
        m("https://share/e", 0, "user", "2+2?", "gemini"), m("https://share/e", 1, "assistant", "4", "gemini"),
    ]


# One OpenAssistant tree (+ a second tree without any answer, a deleted branch, an orphan, a broken row).
#   p1 ─ a1 (rank 0) ─ p3 ─ a6           -> path p1 a1 p3 a6
#      ├ a2 (rank 1) ─ p2 ─ a3           -> path p1 a2 p2 a3
#      │             └ p4                -> ends with a prompt: left out (edit count)
#      ├ a7 (rank 2)                     -> path p1 a7
#      └ a4 (deleted) ─ p5               -> deleted: 2
OASST_EXPECTED = {"conversations": 3, "skipped": {"deleted": 2, "orphan": 1, "missing_field": 1,
                                                   "no_exchange": 1}}
OASST_BEST = [["Root question?", "Answer one.", "Follow-up three?", "Answer six."]]


def oasst_flat_rows() -> list[dict]:
    def m(mid, parent, role, text, rank=None, deleted=False, tree="t1"):
        return {"message_id": mid, "parent_id": parent, "message_tree_id": tree, "role": role, "text": text,
                "rank": rank, "deleted": deleted, "lang": "en", "review_result": True, "synthetic": False}
    return [
        m("p1", None, "prompter", "Root question?"),
        m("a1", "p1", "assistant", "Answer one.", 0), m("a2", "p1", "assistant", "Answer two.", 1),
        m("a7", "p1", "assistant", "Answer seven.", 2), m("a4", "p1", "assistant", "Gone.", 3, deleted=True),
        m("p5", "a4", "prompter", "Under a deleted one."),
        m("p3", "a1", "prompter", "Follow-up three?"), m("a6", "p3", "assistant", "Answer six.", 0),
        m("p2", "a2", "prompter", "Follow-up two?"), m("a3", "p2", "assistant", "Answer three.", 0),
        m("p4", "a2", "prompter", "Unanswered?"),
        m("o1", "missing", "assistant", "Orphan."),
        {"message_id": "x1", "parent_id": "p1", "message_tree_id": "t1", "role": "assistant"},  # no text
        m("q1", None, "prompter", "Lonely root?", tree="t2"),
    ]


def oasst_nested_rows() -> list[dict]:
    """The same trees as the flat rows, in the nested export form (orphan and broken row kept flat)."""
    flat = oasst_flat_rows()
    by_id = {r["message_id"]: dict(r) for r in flat if "text" in r}

    def nest(mid):
        node = {k: v for k, v in by_id[mid].items() if k not in ("parent_id",)}
        node["replies"] = [nest(c["message_id"]) for c in flat if c.get("parent_id") == mid and "text" in c]
        return node
    return [{"message_tree_id": "t1", "tree_state": "ready_for_export", "prompt": nest("p1")},
            {"message_tree_id": "t2", "tree_state": "ready_for_export", "prompt": nest("q1")},
            flat[11], flat[12]]


TEXT_EXPECTED = {"documents": 3, "skipped": {"empty": 1, "wrong_type": 1, "missing_field": 1}}


def text_rows() -> list[dict]:
    return [
        {"text": "The quick brown fox jumps over the lazy dog.", "timestamp": "2019-04-25T12:57:54Z",
         "url": "https://example.com/fox"},
        {"text": "RedPajama style document.", "meta": {"source": "arxiv", "id": "rp-1"}},
        {"text": "   "}, {"text": 5}, {"meta": {}},
        {"text": "A third document, with an address: admin@example.org."},
    ]


CHATTERBOT_EXPECTED = {"conversations": 3, "skipped": {"invalid_yaml": 1, "wrong_type": 1, "no_exchange": 1}}


def write_chatterbot(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "food.yml").write_text(
        "categories:\n- food\nconversations:\n- - Do you eat?\n  - I run on electricity.\n"
        "- - What is a vegetable?\n  - A plant eaten as food.\n  - Is a tomato one?\n  - Botanically a fruit.\n"
        "- - Only a question?\n- - One\n  - - nested\n")
    (d / "sports.yml").write_text("categories:\n- sports\nconversations:\n- - Do you play?\n  - Chess only.\n")
    (d / "broken.yml").write_text("categories: [\n  - : :\n")
    return d


def write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def write_json(path: Path, rows: list) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False))
    return path


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
