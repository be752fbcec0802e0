"""Dockerfile parse cache: text -> grammar.ast.Dockerfile as JSON under ``cache/ast/``, so a no-op
rebuild neither imports lark nor builds the parser (~60 ms of ~200 ms). The key covers the text, the
file name and the grammar package's files (size + mtime); decoding accepts grammar.ast dataclasses
only (no pickle). Imports grammar.ast (grammar itself on a miss) and registry.store."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from grammar import ast

_CLASSES: dict[str, type[Any]] = {
    name: obj for name, obj in vars(ast).items()
    if isinstance(obj, type) and dataclasses.is_dataclass(obj)
}
VERSION = 1


def _grammar_signature() -> str:
    pkg = Path(ast.__file__).parent
    h = hashlib.sha256(f"v{VERSION}".encode())
    with os.scandir(pkg) as it:
        for entry in sorted(it, key=lambda e: e.name):
            if entry.name.endswith((".py", ".lark")):
                st = entry.stat()
                h.update(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {"@": type(value).__name__}
        for f in dataclasses.fields(value):
            out[f.name] = _encode(getattr(value, f.name))
        return out
    if isinstance(value, tuple):
        return {"@t": [_encode(v) for v in value]}
    if isinstance(value, frozenset):
        return {"@f": sorted(_encode(v) for v in value)}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot cache {type(value).__name__} in a Dockerfile AST")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "@t" in value:
            return tuple(_decode(v) for v in value["@t"])
        if "@f" in value:
            return frozenset(_decode(v) for v in value["@f"])
        cls = _CLASSES.get(value.get("@", ""))
        if cls is None:
            raise ValueError(f"unknown AST node {value.get('@')!r}")
        return cls(**{k: _decode(v) for k, v in value.items() if k != "@"})
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def parse_cached(text: str, filename: str, cache_dir: Path | None) -> ast.Dockerfile:
    """grammar.parse(text), served from the cache when the same text was parsed before."""
    path = None
    if cache_dir is not None:
        key = hashlib.sha256(b"\0".join([_grammar_signature().encode(), filename.encode(),
                                          text.encode("utf-8", "surrogateescape")])).hexdigest()
        path = cache_dir / f"{key}.json"
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            tree = _decode(json.loads(path.read_bytes()))
            if isinstance(tree, ast.Dockerfile):
                return tree
    import grammar

    tree = grammar.parse(text, filename=filename)
    if path is not None:
        from registry.store import atomic_write

        with contextlib.suppress(OSError, TypeError):
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(_encode(tree), separators=(",", ":")).encode())
    return tree
