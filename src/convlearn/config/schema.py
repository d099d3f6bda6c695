"""Typed, documented config sections: dataclasses whose fields carry their doc next to them.

Why our own loader and not pydantic/omegaconf: we need (1) one-line errors that name the full key path
(`data.sources[1].format: ...`) and exit 2, (2) the doc string of every key next to the key, rendered
into docs/CONFIG.md, and (3) `--set a.b=v` overrides applied before validation. That is ~150 lines on top of
dataclasses, with no extra dependency.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from ..errors import ConfigError

_MISSING = dataclasses.MISSING


def opt(default: Any = _MISSING, doc: str = "", *, ge: float | None = None, le: float | None = None,
        gt: float | None = None, lt: float | None = None) -> Any:
    """A documented config field. Mutable defaults (list/dict/dataclass instances) are copied per instance."""
    meta = {"doc": doc, "ge": ge, "le": le, "gt": gt, "lt": lt}
    if default is _MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type) -> type:
    """Decorator: a config section (a dataclass; `validate(self, path)` may check cross-field rules)."""
    return dataclasses.dataclass(cls)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        inner = " | ".join(_type_name(a) for a in args)
        return f"{inner} | null" if len(args) < len(get_args(tp)) else inner
    if origin is list:
        return f"list[{_type_name(get_args(tp)[0])}]"
    if origin is dict:
        k, v = get_args(tp)
        return f"dict[{_type_name(k)}, {_type_name(v)}]"
    if dataclasses.is_dataclass(tp):
        return tp.__name__
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against type `tp`; return the value (dataclasses built). Raises ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(path, f"must not be null (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(path, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(path, f"must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__} {value!r}")
        key_tp, val_tp = get_args(tp)
        return {_coerce(k, key_tp, f"{path}.{k}"): _coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if value is None:
        raise ConfigError(path, f"must not be null (expected {_type_name(tp)})")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-5` (no dot) as a string; users mean the number
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):  # YAML reads .inf and .nan as numbers
            raise ConfigError(path, f"must be a finite number; got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def _check_bounds(value: Any, meta: dict, path: str) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    for key, ok, word in (("ge", lambda v, b: v >= b, ">="), ("le", lambda v, b: v <= b, "<="),
                          ("gt", lambda v, b: v > b, ">"), ("lt", lambda v, b: v < b, "<")):
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            raise ConfigError(path, f"must be {word} {bound}; got {value!r}")


def build(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a mapping, checking keys, types and bounds; then `validate(path)`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a mapping, got {type(data).__name__} {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(fields)
            raise ConfigError(_join(path, str(key)), f"unknown key (known keys here: {known})")
    kwargs = {}
    for name, f in fields.items():
        sub = _join(path, name)
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], sub)
            _check_bounds(kwargs[name], f.metadata, sub)
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise ConfigError(sub, "is required")
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(path)
    return obj


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """`a.b.0.c=value` -> (["a", "b", 0, "c"], parsed value). Values are YAML (`3`, `true`, `[a, b]`)."""
    if "=" not in text:
        raise ConfigError(text, "override must look like key.path=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(text, "override has an empty key")
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(key, f"value is not valid YAML: {e.__class__.__name__}") from None
    return parts, value


def apply_override(data: dict, parts: list[str | int], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        here = ".".join(map(str, parts[: i + 1]))
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise ConfigError(here, "no such list item to override")
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise ConfigError(here, "cannot descend into a non-mapping")
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last > len(node):
            raise ConfigError(".".join(map(str, parts)), "no such list item to override")
        if last == len(node):
            node.append(value)
        else:
            node[last] = value
    else:
        if not isinstance(node, dict):
            raise ConfigError(".".join(map(str, parts)), "cannot set a key on a non-mapping")
        node[last] = value


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj)


def render_docs(cls: type, title: str) -> str:
    """Markdown reference of every key: path, type, default, doc."""
    lines = [f"# {title}", "", "Generated by `convlearn config docs`; do not edit by hand.", ""]

    def walk(c: type, prefix: str, doc: str) -> None:
        hints = get_type_hints(c)
        rows, subs = [], []
        for f in dataclasses.fields(c):
            tp = hints[f.name]
            key = _join(prefix, f.name)
            inner = _dataclass_inside(tp)
            if inner is not None and get_origin(tp) is None:
                subs.append((inner, key, f.metadata.get("doc", "")))
                continue
            if f.default is not _MISSING:
                default = f.default
            elif f.default_factory is not _MISSING:
                default = f.default_factory()
                if dataclasses.is_dataclass(default) or isinstance(default, list):
                    default = to_dict(default) if dataclasses.is_dataclass(default) else \
                        [to_dict(x) if dataclasses.is_dataclass(x) else x for x in default]
            else:
                default = "(required)"
            cells = (f"`{key}`", _type_name(tp), f"`{_fmt(default)}`", f.metadata.get("doc", ""))
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
            if inner is not None:
                subs.append((inner, key + "[]", ""))
        if rows:
            lines.extend([f"## `{prefix or 'top level'}`", ""] + ([doc, ""] if doc else []) +
                         ["| key | type | default | meaning |", "|---|---|---|---|", *rows, ""])
        for inner, key, sub_doc in subs:
            walk(inner, key, sub_doc)

    walk(cls, "", "")
    return "\n".join(lines) + "\n"


def _dataclass_inside(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in get_args(tp):
        found = _dataclass_inside(arg)
        if found is not None:
            return found
    return None


def _fmt(value: Any) -> str:
    """A default as it would be written in YAML."""
    if isinstance(value, str) and value == "(required)":
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
