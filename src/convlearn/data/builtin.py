"""Text and conversations that every machine has, for offline runs, tests and the demo.

- Python's own standard-library docstrings: the "original distribution" text (read from the source files
  with `ast`, so nothing is imported and nothing runs).
- The English corpus that the `chatterbot-corpus` package ships (topics become domains).
"""
from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import chatterbot_corpus

# Folders of the standard library that are tests, demos or vendored code, not documentation.
_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "dist-packages",
              "__pycache__", "ensurepip", "pydoc_data", "tkinter", "venv"}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_docstrings(max_chars: int | None = None, min_chars: int = 80) -> Iterator[dict]:
    """Yield `{"id", "text", "meta"}` documents: one per module/class/function docstring, in a fixed order.

    Deterministic for a given Python installation. `max_chars` caps the total text.
    """
    root = stdlib_dir()
    total = 0
    for path in sorted(_stdlib_files(root)):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        for qualname, node in _documented(tree, ""):
            doc = ast.get_docstring(node, clean=True)
            if not doc or len(doc) < min_chars:
                continue
            name = f"{module}.{qualname}" if qualname else module
            yield {"id": name, "text": doc, "meta": {"source": "python-stdlib", "object": name}}
            total += len(doc)
            if max_chars is not None and total >= max_chars:
                return


def _stdlib_files(root: Path) -> Iterator[Path]:
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        if any(part in _SKIP_DIRS or part.startswith(("_", ".")) for part in rel):
            continue
        yield path


def _documented(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.AST]]:
    if isinstance(node, ast.Module):
        yield "", node
    for child in getattr(node, "body", []):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if child.name.startswith("_"):
                continue
            qual = f"{prefix}.{child.name}" if prefix else child.name
            yield qual, child
            if isinstance(child, ast.ClassDef):
                yield from _documented(child, qual)


def chatterbot_dir(language: str = "english") -> Path:
    """The YAML corpus folder that the chatterbot-corpus package ships."""
    return Path(chatterbot_corpus.__file__).parent / "data" / language
