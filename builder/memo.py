"""The build memo: a rebuild whose inputs did not move (same Dockerfile and options, context metadata
and base digests unchanged: a walk with lstat and a few lookups) returns the recorded image with every
step CACHED, without parsing, planning or hashing; any difference falls back to the engine. Never used
with URLs/git, --no-cache, --pull or --cache-to. Imports registry and light builder modules."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder import progress as ev
from builder.options import BuildOptions
from builder.records import BuildRecord, Records, StepRecord
from builder.result import BuildResult
from registry.model import Descriptor, canonical_json
from registry.store import REF_NAME, DirStore

if TYPE_CHECKING:
    from builder.engine import Engine

MEMO_VERSION = 1


def _dockerfile_text(opts: BuildOptions) -> str | None:
    if opts.dockerfile_text is not None:
        return opts.dockerfile_text
    try:
        return opts.dockerfile_path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return None


def memo_key(opts: BuildOptions) -> str | None:
    """The memo key of a build, or None when the build must not use the memo."""
    if opts.no_cache or opts.pull or opts.no_cache_filter or opts.cache_to:
        return None
    text = _dockerfile_text(opts)
    if text is None:
        return None
    from builder.cachekey import CACHE_SCHEMA
    from registry.imagebuild import host_arch

    doc = {
        "memo": MEMO_VERSION, "schema": CACHE_SCHEMA, "arch": host_arch(), "dockerfile": text,
        "dockerfile_path": str(opts.dockerfile_path.resolve()) if opts.dockerfile_text is None else "-",
        "context": str(Path(opts.context_dir).resolve()), "args": dict(opts.build_args),
        "target": opts.target, "labels": dict(opts.labels), "platform": opts.platform,
        "contexts": dict(opts.build_contexts), "network": opts.network,
        "compression": opts.compression, "secrets": sorted(opts.secrets),
        "epoch": os.environ.get("SOURCE_DATE_EPOCH", ""),
    }
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def _path(store: DirStore, key: str) -> Path:
    return store.root / "cache" / "memo" / f"{key}.json"


def _context(root: str, dockerfile: str | None, name: str) -> Any:
    from builder.context import BuildContext

    return BuildContext(Path(root), dockerfile=Path(dockerfile) if dockerfile else None, name=name)


def try_memo(store: DirStore, opts: BuildOptions, progress: ev.Progress) -> BuildResult | None:
    """The previous result when every input is unchanged; None otherwise (build normally)."""
    key = memo_key(opts)
    if key is None:
        return None
    try:
        doc = json.loads(_path(store, key).read_bytes())
        if doc.get("memo") != MEMO_VERSION:
            return None
        for ctx in doc["contexts"]:
            if _context(ctx["root"], ctx.get("dockerfile"), ctx["name"]).stat_fingerprint() != ctx["fp"]:
                return None
        if doc["images"]:
            from registry.image import resolve_image
            from registry.model import Platform

            platform = Platform.parse(doc["platform"])
            for ref, digest in doc["images"].items():
                if str(resolve_image(store, ref, platform=platform).digest) != digest:
                    return None
        manifest = Descriptor.from_dict(doc["image"])
        if not store.has(manifest.digest):
            return None
    except Exception:  # noqa: BLE001 - any doubt means "build normally"
        return None
    # Same inputs, same result: name it, record the build, report every step as cached.
    with store.lock(shared=True):
        current = {d.annotations.get(REF_NAME): d.digest for d in store.entries()}
        for name in opts.tags:
            if current.get(name) != manifest.digest:
                store.tag(name, manifest)
    records = Records(store)
    started = time.time()
    rec = BuildRecord(id=Records.new_id(), started=started, context=doc["context"],
                      dockerfile=doc["dockerfile"], target=opts.target or "", tags=list(opts.tags),
                      args=dict(doc.get("args") or {}), platform=doc["platform"],
                      warnings=list(doc.get("warnings") or ()))
    for message in rec.warnings:
        progress.emit(ev.Note(message, "warning"))
    total = len(doc["steps"])
    for raw in doc["steps"]:
        s = StepRecord.from_dict(raw)
        s.status = "META" if s.status == "META" else "CACHED"
        s.duration, s.reasons, s.log, s.exit_code, s.commit_seconds = 0.0, [], None, None, None
        rec.steps.append(s)
        progress.emit(ev.StepStart(s.index, total, s.stage, s.instruction, s.line))
        progress.emit(ev.StepCached(s.index) if s.status == "CACHED" else ev.StepDone(s.index, 0.0))
    rec.status, rec.finished = "ok", time.time()
    rec.image, rec.image_id = str(manifest.digest), doc["image_id"]
    with contextlib.suppress(OSError):
        records.save(rec)
    return BuildResult(doc["image_id"], manifest, rec, tuple(opts.tags))


def save_memo(store: DirStore, opts: BuildOptions, engine: Engine, result: BuildResult) -> None:
    """Remember a successful build's inputs and result (best effort)."""
    key = memo_key(opts)
    if key is None or engine.flags.get("volatile") or engine.plan is None:
        return
    contexts = []
    if engine._context is not None:
        ctx = engine._context
        contexts.append({"name": "context", "root": str(ctx.root), "fp": ctx.stat_fingerprint(),
                         "dockerfile": str(opts.dockerfile_path) if opts.dockerfile_text is None else None})
    for name, ctx in engine._named.items():
        contexts.append({"name": name, "root": str(ctx.root), "fp": ctx.stat_fingerprint(),
                         "dockerfile": None})
    rec = result.record
    doc = {"memo": MEMO_VERSION, "contexts": contexts, "images": dict(engine.resolved_images),
           "platform": engine.plan.platforms.platform, "image": result.manifest.to_dict(),
           "image_id": result.image_id, "context": rec.context, "dockerfile": rec.dockerfile,
           "args": rec.args, "warnings": rec.warnings,
           "steps": [dataclasses.asdict(s) for s in rec.steps]}
    from registry.store import atomic_write

    path = _path(store, key)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, canonical_json(doc))
