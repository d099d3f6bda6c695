"""OpenAssistant: rebuild conversation threads from message trees.

Accepts the flat message rows (`message_id`, `parent_id`, `message_tree_id`, `role`, `text`, `rank`,
`deleted`, `lang`) and the nested tree export (`{message_tree_id, prompt: {..., replies: [...]}}`).
Messages are keyed by (tree, id): an id reused in another tree is another message, never a bridge between two
trees; an id used twice in one tree keeps its first message (`duplicate_id`). Deleted messages and everything
under them are left out (`deleted`); messages whose parent is missing likewise (`orphan`); messages whose
parents form a loop, so no root reaches them, are counted as `cycle`. By default every root-to-leaf path that
ends with an assistant message becomes one conversation (paths ending with an unanswered prompt are counted
and left out); `best_path_only` keeps only the best-ranked path of each tree, trimmed back to its last
assistant message. Every walk is iterative, so a chain of thousands of messages is one long conversation,
not a RecursionError.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator

from .normalize import make_conversation, map_role
from .records import Conversation, Skip

Key = tuple[str | None, str]  # (message_tree_id, message_id)


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


def _rank(m: dict) -> float:
    r = m.get("rank")
    return float(r) if isinstance(r, (int, float)) else float("inf")


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

    nodes: dict[Key, dict] = {}
    for m in messages:
        missing = [k for k in ("message_id", "role", "text") if m.get(k) is None]
        if missing:
            yield Skip("missing_field", missing[0])
            continue
        tree = m.get("message_tree_id")
        key = (str(tree) if tree is not None else None, str(m["message_id"]))
        if key in nodes:
            yield Skip("duplicate_id", key[1])
            continue
        nodes[key] = m
    children: dict[Key | None, list[Key]] = defaultdict(list)
    for key, m in nodes.items():
        parent = m.get("parent_id")
        children[(key[0], str(parent)) if parent is not None else None].append(key)

    seen: set[Key] = set()

    def drop_subtree(start: Key, reason: str) -> Iterator[Skip]:
        stack = [start]
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            yield Skip(reason, cur[1])
            stack.extend(children.get(cur, []))

    for parent in [p for p in children if p is not None and p not in nodes]:
        for key in children[parent]:
            yield from drop_subtree(key, "orphan")

    for root in children.get(None, []):
        tree_id = str(nodes[root].get("message_tree_id") or root[1])
        leaves, deleted, parent_of = _walk(root, nodes, children, best_path_only, seen)
        for key in deleted:
            yield from drop_subtree(key, "deleted")
        kept = failed = 0
        for leaf in leaves:
            path = _path_to(leaf, parent_of)
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
                pairs = [(map_role(nodes[k]["role"]), nodes[k]["text"]) for k in path]
                meta = {"tree_id": tree_id, "leaf_id": path[-1][1], "split_group": tree_id,
                        "ranks": [nodes[k].get("rank") for k in path]}
                yield make_conversation(f"{tree_id}:{path[-1][1]}", source, pairs, edits,
                                        nodes[path[0]].get("lang"), None, meta)
                kept += 1
            except Skip as s:
                failed += 1
                yield s
        if not kept and not failed and leaves:  # a tree whose root survived but that holds no answered path
            yield Skip("no_exchange", tree_id)

    for key in nodes:  # alive, not orphaned, never reached from a root: their parents loop
        if key not in seen:
            seen.add(key)
            yield Skip("cycle", key[1])


def _walk(root: Key, nodes: dict, children: dict, best_only: bool, seen: set
          ) -> tuple[list[Key], list[Key], dict[Key, Key]]:
    """Depth-first with an explicit stack: (leaves, roots of deleted subtrees, parent of every node kept)."""
    if nodes[root].get("deleted"):
        return [], [root], {}
    leaves, deleted, parent_of = [], [], {}
    stack = [root]
    seen.add(root)
    while stack:
        key = stack.pop()
        alive = []
        for k in children.get(key, []):
            if nodes[k].get("deleted"):
                deleted.append(k)
            elif k not in seen:
                alive.append(k)
        if best_only and alive:
            best = min(alive, key=lambda k: _rank(nodes[k]))
            for other in alive:  # the branches not taken are part of the tree, not loops: mark them seen
                if other is not best:
                    _mark(other, children, seen)
            alive = [best]
        if not alive:
            leaves.append(key)
        for k in reversed(alive):
            seen.add(k)
            parent_of[k] = key
            stack.append(k)
    return leaves, deleted, parent_of


def _mark(start: Key, children: dict, seen: set) -> None:
    stack = [start]
    while stack:
        cur = stack.pop()
        if cur not in seen:
            seen.add(cur)
            stack.extend(children.get(cur, []))


def _path_to(leaf: Key, parent_of: dict[Key, Key]) -> list[Key]:
    path = [leaf]
    while path[-1] in parent_of:
        path.append(parent_of[path[-1]])
    return path[::-1]
