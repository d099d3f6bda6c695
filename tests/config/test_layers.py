"""Imports point one way (docs/ARCHITECTURE.md): each package of convlearn may import only the layers below it.
Read from the source with `ast`, so a new upward import fails here, not in a review."""
import ast
from pathlib import Path

import convlearn

SRC = Path(convlearn.__file__).parent
# What each layer may import (besides itself). Function-local imports count too: an upward import hidden in a
# function is still an upward dependency.
ALLOWED = {
    "errors": set(),
    "config": {"errors"},
    "precision": set(),
    "data": {"config", "errors"},
    "templates": set(),
    "gguf_models": {"errors"},
    "models": {"config", "errors", "precision", "templates", "gguf_models"},
    "tiny": {"config", "errors", "data", "models", "templates"},
    "store": {"errors"},
    "serve": {"errors", "config", "models", "precision", "store"},
    "train": {"errors", "config", "precision", "data", "models"},
    "eval": {"errors", "config", "precision", "data", "models", "train"},
    "experiments": {"errors", "config", "precision", "data", "models", "tiny", "train", "eval"},
    "learn": {"errors", "config", "precision", "data", "models", "tiny", "store", "train", "eval", "experiments"},
    "demos": {"errors", "config", "precision", "data", "models", "tiny", "store", "serve", "train", "eval",
              "experiments", "learn"},
}
TOP = {"cli", "cli_live", "__main__", "__init__"}  # parse and dispatch: may import anything


def _layer(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_layers(path: Path, package: list[str] | None = None) -> set[str]:
    """The convlearn layers `path` imports; `package`: its package's path under convlearn (default: where it is)."""
    package = list(path.relative_to(SRC).parent.parts) if package is None else package
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                parts = base + (node.module.split(".") if node.module else [])
                if not parts:  # `from . import x` at the package root
                    parts = [alias.name for alias in node.names][:1]
            elif node.module and node.module.split(".")[0] == "convlearn":
                parts = node.module.split(".")[1:]
            else:
                continue
            if parts:
                out.add(parts[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "convlearn" and "." in alias.name:
                    out.add(alias.name.split(".")[1])
    return out


def test_imports_point_down_the_layers():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        layer = _layer(path)
        if layer in TOP:
            continue
        assert layer in ALLOWED, f"{path}: a new layer; add it to ALLOWED and to docs/ARCHITECTURE.md"
        for dep in _imported_layers(path) - {layer}:
            if dep not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(SRC)} ({layer}) imports {dep}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_an_upward_import(tmp_path):
    """The checker itself: an upward import written the three ways the code base writes imports is found."""
    for text in ("from ..serve.api import Limits\n", "from convlearn.serve import api\n",
                 "def f():\n    from ...serve import api\n"):
        probe = tmp_path / "probe.py"
        probe.write_text(text)
        assert "serve" in _imported_layers(probe, ["learn", "sub"] if "..." in text else ["learn"])
