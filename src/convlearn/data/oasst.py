"""OpenAssistant: rebuild conversation threads from message trees.

Accepts the flat message rows (`message_id`, `parent_id`, `message_tree_id`, `role`, `text`, `rank`,
`deleted`, `lang`) and the nested tree export (`{message_tree_id, prompt: {..., replies: [...]}}`).
Deleted messages and everything under them are left out (counted as `deleted`); messages whose parent is
missing likewise (`orphan`). By default every root-to-leaf path that ends with an assistant message becomes
one conversation (paths ending with an unanswered prompt are counted and left out); `best_path_only` keeps
only the best-ranked path of each tree, trimmed back to its last assistant message.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator

from .normalize import make_conversation, map_role
from .records import Conversation, Skip


def _flatten(row: dict, out: list[dict]) -> None:
    """Nested export -> flat message dicts with parent_id filled from the nesting."""
    tree_id = row.get("message_tree_id")
    stack = [(row["prompt"], None)]
    while stack:
        node, parent = stack.pop()
        if not isinstance(node, dict):
            continue
        flat = {k: v for k, v in node.items() if k != "replies"}
        flat.setdefault("parent_id", parent)
        flat.setdefault("message_tree_id", tree_id)
        out.append(flat)
        for reply in reversed(node.get("replies") or []):
            stack.append((reply, node.get("message_id")))


def oasst_conversations(rows: Iterable, source: str, edits: Counter, best_path_only: bool = False
                        ) -> Iterator[Conversation | Skip]:
    messages: list[dict] = []
    for row in rows:
        if isinstance(row, Skip):
            yield row
        elif not isinstance(row, dict):
            yield Skip("not_an_object", type(row).__name__)
        elif isinstance(row.get("prompt"), dict):
            _flatten(row, messages)
        else:
            messages.append(row)

    nodes: dict[str, dict] = {}
    for m in messages:
        missing = [k for k in ("message_id", "role", "text") if m.get(k) is None]
        if missing:
            yield Skip("missing_field", missing[0])
            continue
        nodes[str(m["message_id"])] = m
    children: dict[str | None, list[str]] = defaultdict(list)
    for mid, m in nodes.items():
        parent = m.get("parent_id")
        children[str(parent) if parent is not None else None].append(mid)

    def drop_subtree(mid: str, reason: str) -> Iterator[Skip]:
        stack = [mid]
        while stack:
            cur = stack.pop()
            yield Skip(reason, cur)
            stack.extend(children.get(cur, []))

    for parent in [p for p in children if p is not None and p not in nodes]:
        for mid in children[parent]:
            yield from drop_subtree(mid, "orphan")

    for root in children.get(None, []):
        tree_id = str(nodes[root].get("message_tree_id") or root)
        paths: list[list[str]] = []
        deleted: list[str] = []
        _walk(root, nodes, children, best_path_only, [], paths, deleted)
        for mid in deleted:
            yield from drop_subtree(mid, "deleted")
        kept = failed = 0
        for path in paths:
            if nodes[path[-1]].get("role") != "assistant":
                if not best_path_only:  # one conversation per root-to-leaf path that ends with an answer
                    edits["oasst_path_ending_with_prompter"] += 1
                    continue
                while path and nodes[path[-1]].get("role") != "assistant":  # the one path: keep its answer
                    path = path[:-1]
                    edits["oasst_best_path_trimmed"] += 1
                if not path:
                    continue
            try:
                pairs = [(map_role(nodes[m]["role"]), nodes[m]["text"]) for m in path]
                root_msg = nodes[path[0]]
                meta = {"tree_id": tree_id, "leaf_id": path[-1], "split_group": tree_id,
                        "ranks": [nodes[m].get("rank") for m in path]}
                yield make_conversation(f"{tree_id}:{path[-1]}", source, pairs, edits, root_msg.get("lang"),
                                        None, meta)
                kept += 1
            except Skip as s:
                failed += 1
                yield s
        if not kept and not failed and paths:  # a tree whose root survived but that holds no answered path
            yield Skip("no_exchange", tree_id)


def _rank(m: dict) -> float:
    r = m.get("rank")
    return float(r) if isinstance(r, (int, float)) else float("inf")


def _walk(mid: str, nodes: dict, children: dict, best_only: bool, prefix: list[str],
          paths: list[list[str]], deleted: list[str]) -> None:
    """Depth-first (trees are a few levels deep): collects root-to-leaf paths and deleted subtree roots."""
    if nodes[mid].get("deleted"):
        deleted.append(mid)
        return
    path = prefix + [mid]
    alive = []
    for k in children.get(mid, []):
        if nodes[k].get("deleted"):
            deleted.append(k)
        else:
            alive.append(k)
    if not alive:
        paths.append(path)
        return
    if best_only:
        alive = [min(alive, key=lambda k: _rank(nodes[k]))]
    for k in alive:
        _walk(k, nodes, children, best_only, path, paths, deleted)
