"""The operator's view of a serve directory's versions: the timeline (`convlearn versions`), the versions that
hold a conversation (`versions --trained-on`: deletion does not retrain a promoted version), and rollback."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..store import ServeDir, Store
from .records import GateDecision, RoundPlan


def rollback(store: Store, version_id: str) -> dict:
    """Make an older promoted (or the base) version current; the server swaps to it between requests."""
    before = store.current_id()
    row = store.version(version_id)
    path = Path(row.path) if row and row.path else None
    if row is not None and row.status != "base" and not (path and path.is_dir()):
        # the server would keep the old version and log a failed swap every poll: refuse here, with the path
        raise UserError(f"version {version_id}: its model folder {path} is gone; restore it first")
    store.set_current(version_id)
    return {"from": before, "to": version_id}


def versions_table(store: Store) -> str:
    current = store.current_id()
    lines = [f"{'version':8} {'status':9} {'parent':7} {'conversations':>13}  gate"]
    for v in store.versions():
        gate = GateDecision.from_json(v.gate or {})
        figs = gate.figures.get("candidate", {})
        shown = ", ".join(f"{k} {val:.3g}" for k, val in figs.items() if isinstance(val, (int, float)))
        why = "; ".join(gate.reasons)
        mark = "*" if v.id == current else " "
        lines.append(f"{mark}{v.id:7} {v.status:9} {v.parent or '-':7} "
                     f"{v.conversations if v.conversations is not None else '-':>13}  "
                     f"{shown}{' | rejected: ' + why if why else ''}")
    return "\n".join(lines) + "\n(* current)"


def trained_on_table(store: Store, serve_dir: ServeDir, conversation_id: str) -> str:
    """The versions whose training read a conversation: the rounds whose plan trained on it, and every version
    trained from one of those (weights inherit what their parent learned). Deletion does not retrain them."""
    direct, rows = set(), []
    for v in store.versions():
        plan = serve_dir.round(v.round).plan if v.round else None
        if plan is not None and plan.is_file() and conversation_id in RoundPlan.load(plan).trained:
            direct.add(v.id)
    for v in store.versions():
        via = next((a.id for a in store.lineage(v.id) if a.id in direct), None)
        if via is not None:
            how = "trained on it" if via == v.id else f"inherits it from {via}"
            rows.append(f"{v.id:8} {v.status:9} {how}")
    if not rows:
        return f"no version was trained on {conversation_id}"
    return "\n".join([f"{'version':8} {'status':9} how", *rows])
