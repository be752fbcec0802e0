"""The build cache index: step key -> StepResult in ``cache/keys/<hex>.json``, the key document behind
it in ``cache/explain/<hex>.json`` (so a later miss can be explained). Writes are atomic; a record
whose layer blob left the store is a miss; gc keeps record layers through the ``buildcache`` roots
the engine writes. Imports builder.cachekey and registry only."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.cachekey import KeyDoc
from registry.digest import Digest
from registry.model import Descriptor, canonical_json
from registry.store import DirStore, atomic_write


@dataclass(frozen=True, slots=True)
class StepResult:
    """What a step produced: its layer (None for metadata steps and empty diffs), the image
    config after it (the ``config`` object of the image config), and its history entry."""

    key: Digest
    layer: Descriptor | None
    diff_id: Digest | None
    uncompressed_size: int
    config: Mapping[str, Any]
    history: Mapping[str, Any]
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"key": str(self.key), "config": dict(self.config),
                             "history": dict(self.history), "size": self.uncompressed_size}
        if self.layer is not None and self.diff_id is not None:
            d["layer"] = self.layer.to_dict()
            d["diff_id"] = str(self.diff_id)
        if self.extra:
            d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StepResult:
        layer = Descriptor.from_dict(d["layer"]) if d.get("layer") else None
        return cls(Digest.parse(d["key"]), layer,
                   Digest.parse(d["diff_id"]) if d.get("diff_id") else None, int(d.get("size", 0)),
                   dict(d.get("config") or {}), dict(d.get("history") or {}), dict(d.get("extra") or {}))


class BuildCache:
    """key → StepResult on disk under ``<store>/cache``."""

    def __init__(self, store: DirStore) -> None:
        self.store = store
        base = store.subdir("cache")
        self.keys_dir = base / "keys"
        self.explain_dir = base / "explain"
        self.keys_dir.mkdir(exist_ok=True)
        self.explain_dir.mkdir(exist_ok=True)

    def lookup(self, key: Digest) -> StepResult | None:
        """The recorded result, or None (also when its layer blob is no longer stored)."""
        try:
            raw = (self.keys_dir / f"{key.hex}.json").read_bytes()
            result = StepResult.from_dict(json.loads(raw))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if result.key != key:
            return None
        if result.layer is not None and not self.store.has(result.layer.digest):
            return None
        return result

    def record(self, result: StepResult) -> None:
        """Remember ``result`` for its key (atomic; the last writer wins, results are equal)."""
        atomic_write(self.keys_dir / f"{result.key.hex}.json", canonical_json(result.to_dict()))

    def save_doc(self, key: Digest, doc: KeyDoc) -> None:
        path = self.explain_dir / f"{key.hex}.json"
        if path.exists():
            return
        with contextlib.suppress(OSError):
            atomic_write(path, canonical_json(doc.to_dict()))

    def load_doc(self, key: Digest | str) -> KeyDoc | None:
        hexval = key.hex if isinstance(key, Digest) else str(key).removeprefix("sha256:")
        try:
            return KeyDoc.from_dict(json.loads((self.explain_dir / f"{hexval}.json").read_bytes()))
        except (OSError, ValueError):
            return None

    def results(self) -> Iterator[StepResult]:
        for entry in os.scandir(self.keys_dir):
            if not entry.name.endswith(".json"):
                continue
            try:
                yield StepResult.from_dict(json.loads(Path(entry.path).read_bytes()))
            except (OSError, ValueError, KeyError, TypeError):
                continue

    def forget(self, keys: set[Digest]) -> int:
        count = 0
        for key in keys:
            for d in (self.keys_dir, self.explain_dir):
                with contextlib.suppress(FileNotFoundError):
                    (d / f"{key.hex}.json").unlink()
                    count += d is self.keys_dir
        return count
