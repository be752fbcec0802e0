"""Build records: every build leaves ``builds/<id>.json`` (what ran, what was cached, why a key
missed, timings, layers) and ``builds/<id>/<n>.log`` (each step's full output, never clipped).

Records are written atomically when a build ends (and once at its start, as "running"), so a
killed build leaves a record marked running. Stdlib + registry.store.atomic_write only.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from registry.model import canonical_json
from registry.store import DirStore, atomic_write


@dataclass
class StepRecord:
    index: int                    # 1-based over the whole build ("step 4/9")
    stage: str                    # stage name, or its index when unnamed
    stage_step: int               # 1-based position inside the stage (for matching across builds)
    instruction: str              # the instruction as written (continuations joined)
    line: int
    status: str = "PENDING"       # CACHED | RAN | FAILED | PENDING
    key: str = ""
    duration: float = 0.0
    layer: str | None = None      # compressed layer digest
    layer_size: int | None = None
    diff_size: int | None = None  # uncompressed bytes
    reasons: list[str] = field(default_factory=list)
    log: str | None = None        # file name under builds/<id>/
    exit_code: int | None = None
    commit_seconds: float | None = None   # diff + tar + compress + store of the layer (RAN steps)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StepRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class BuildRecord:
    id: str
    started: float
    context: str
    dockerfile: str
    target: str = ""
    tags: list[str] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)
    platform: str = ""
    status: str = "running"       # running | ok | failed
    finished: float | None = None
    image: str | None = None      # manifest digest
    image_id: str | None = None   # config digest (docker's image ID)
    error: str | None = None
    steps: list[StepRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return (self.finished or time.time()) - self.started

    def counts(self) -> tuple[int, int]:
        ran = sum(1 for s in self.steps if s.status in ("RAN", "FAILED"))
        cached = sum(1 for s in self.steps if s.status == "CACHED")
        return ran, cached

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = [asdict(s) for s in self.steps]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BuildRecord:
        known = {f for f in cls.__dataclass_fields__}
        rec = cls(**{k: v for k, v in d.items() if k in known and k != "steps"})
        rec.steps = [StepRecord.from_dict(s) for s in d.get("steps") or ()]
        return rec

    def identity(self) -> tuple[str, str, str]:
        return (self.context, self.dockerfile, self.target)


class Records:
    """The ``builds/`` directory of a store."""

    def __init__(self, store: DirStore) -> None:
        self.dir = store.subdir("builds")

    @staticmethod
    def new_id() -> str:
        # the start time in milliseconds (so ids sort like builds) plus a little randomness
        return f"{time.time_ns() // 1_000_000:012x}" + secrets.token_hex(1)

    def path(self, build_id: str) -> Path:
        return self.dir / f"{build_id}.json"

    def log_dir(self, build_id: str) -> Path:
        d = self.dir / build_id
        d.mkdir(exist_ok=True)
        return d

    def save(self, rec: BuildRecord, *, durable: bool = True) -> None:
        """Write the record atomically (``durable=False`` skips the fsyncs: the "running"
        record written at the start only has to survive until the final one replaces it)."""
        atomic_write(self.path(rec.id), canonical_json(rec.to_dict()), durable=durable)

    def _ids_newest_first(self) -> list[str]:
        names = [e.name[:-5] for e in os.scandir(self.dir)
                 if e.name.endswith(".json") and not e.name.startswith(".")]
        return sorted(names, reverse=True)

    def load(self, build_id: str) -> BuildRecord:
        return BuildRecord.from_dict(json.loads(self.path(build_id).read_bytes()))

    def all(self) -> list[BuildRecord]:
        """Every readable record, oldest first."""
        out = []
        for entry in os.scandir(self.dir):
            if entry.name.endswith(".json") and entry.is_file():
                try:
                    out.append(BuildRecord.from_dict(json.loads(Path(entry.path).read_bytes())))
                except (OSError, ValueError, TypeError):
                    continue
        out.sort(key=lambda r: (r.started, r.id))
        return out

    def find(self, prefix: str) -> list[BuildRecord]:
        if self.path(prefix).is_file():
            return [self.load(prefix)]
        return [r for r in self.all() if r.id.startswith(prefix)]

    def last(self) -> BuildRecord | None:
        for build_id in self._ids_newest_first():
            try:
                return self.load(build_id)
            except (OSError, ValueError, TypeError):
                continue
        return None

    def closest_before(self, rec: BuildRecord, *, scan: int = 200) -> BuildRecord | None:
        """The most recent earlier build of the same Dockerfile (same context and target
        first, then the same Dockerfile, then any), looking at the newest ``scan`` records."""
        same_file: BuildRecord | None = None
        anything: BuildRecord | None = None
        for build_id in self._ids_newest_first()[:scan]:
            if build_id == rec.id:
                continue
            try:
                r = self.load(build_id)
            except (OSError, ValueError, TypeError):
                continue
            if r.started > rec.started or not r.steps:
                continue
            if r.identity() == rec.identity():
                return r
            if same_file is None and r.dockerfile == rec.dockerfile:
                same_file = r
            if anything is None:
                anything = r
        return same_file or anything

    def read_log(self, build_id: str, name: str) -> Iterator[bytes]:
        with (self.dir / build_id / name).open("rb") as f:
            while chunk := f.read(1 << 16):
                yield chunk

    def remove(self, build_id: str) -> None:
        import shutil

        self.path(build_id).unlink(missing_ok=True)
        shutil.rmtree(self.dir / build_id, ignore_errors=True)
