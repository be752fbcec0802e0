"""Build cache in a registry (--cache-to/--cache-from type=registry,ref=REF[,mode=min|max]): an OCI
image manifest whose layers are cached steps' blobs and whose config lists the records. Imported
lazily: a layer is downloaded (verified) only when its key hits, then joins the local cache. Imports
builder.cache/errors/options and registry (registry.remote inside functions)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Sequence
from typing import Any

from builder.cache import BuildCache, StepResult
from builder.errors import BuildError
from builder.options import CacheSpec
from registry import mediatypes as mt
from registry.digest import Digest
from registry.model import Descriptor, Manifest, canonical_json
from registry.store import DirStore

CACHE_CONFIG_TYPE = "application/vnd.pybuild.cache.config.v1+json"
SCHEMA = 1


def cache_manifest(store: DirStore, results: Sequence[StepResult]) -> Descriptor:
    """Store the cache manifest (and its config) for ``results`` locally; returns its descriptor."""
    layers: list[Descriptor] = []
    seen: set[Digest] = set()
    records = []
    for r in results:
        if r.layer is not None and r.layer.digest not in seen:
            seen.add(r.layer.digest)
            layers.append(Descriptor(r.layer.media_type, r.layer.digest, r.layer.size))
        records.append(r.to_dict())
    records.sort(key=lambda d: d["key"])
    config = canonical_json({"schema": SCHEMA, "records": records})
    cdesc = store.put(config, CACHE_CONFIG_TYPE)
    manifest = Manifest(mt.OCI_MANIFEST, cdesc, tuple(layers))
    return store.put(manifest.to_json(), mt.OCI_MANIFEST)


def export_cache(store: DirStore, spec: CacheSpec, results: Sequence[StepResult]) -> Digest:
    """Push the cache for ``results`` to ``spec.ref``; returns the manifest digest pushed."""
    from registry.gc import lease
    from registry.reference import parse_reference
    from registry.remote.client import Remote
    from registry.remote.push import Pusher

    desc = cache_manifest(store, results)
    target = parse_reference(spec.ref)
    with lease(store, [desc.digest, *(r.layer.digest for r in results if r.layer)]), Remote() as remote:
        pushed = Pusher(store, remote).push(Descriptor(desc.media_type, desc.digest, desc.size), target)
    return pushed.digest


class RemoteCache:
    """--cache-from sources, read lazily; ``lookup`` mirrors BuildCache.lookup."""

    def __init__(self, store: DirStore, specs: Sequence[CacheSpec]) -> None:
        self.store = store
        self.cache = BuildCache(store)
        self.specs = list(specs)
        self._lock = threading.Lock()
        self._loaded = False
        self._records: dict[str, tuple[dict[str, Any], Any]] = {}
        self._remote: Any = None
        self.errors: list[str] = []

    def _load(self) -> None:
        from registry.reference import parse_reference
        from registry.remote.client import Remote

        self._remote = Remote()
        for spec in self.specs:
            try:
                ref = parse_reference(spec.ref)
                repo = self._repo(ref)
                resp = repo.get_manifest(ref.digest and str(ref.digest) or ref.tag or "latest")
                manifest = Manifest.from_json(resp.raw, media_type=resp.media_type or None)
                if manifest.config.media_type != CACHE_CONFIG_TYPE:
                    self.errors.append(f"{spec.ref}: not a pybuild cache")
                    continue
                raw = self._fetch_small(repo, manifest.config)
                doc = json.loads(raw)
                for rec in doc.get("records") or ():
                    self._records.setdefault(rec["key"], (rec, repo))
            except Exception as exc:  # noqa: BLE001 - a missing cache is not a build failure
                self.errors.append(f"{spec.ref}: {exc}")

    def _repo(self, ref: Any) -> Any:
        endpoints = self._remote.config.endpoints(ref)
        ep = endpoints[-1]
        return self._remote.registry(ep.host).repository(ep.repository)

    @staticmethod
    def _fetch_small(repo: Any, desc: Descriptor) -> bytes:
        with repo.open_blob(desc.digest) as resp:
            data = resp.raw.read(desc.size + 1, decode_content=False)
        if Digest.of(data) != desc.digest:
            raise BuildError(f"cache config {desc.digest}: digest mismatch")
        return bytes(data)

    def lookup(self, key: Digest) -> StepResult | None:
        with self._lock:
            if not self._loaded:
                self._loaded = True
                self._load()
            found = self._records.get(str(key))
        if found is None:
            return None
        rec, repo = found
        try:
            result = StepResult.from_dict(rec)
        except (KeyError, ValueError, TypeError):
            return None
        if result.layer is not None and not self.store.has(result.layer.digest):
            try:
                self._download(repo, result.layer)
            except Exception:  # noqa: BLE001 - treat an unreadable remote layer as a miss
                return None
        self.cache.record(result)
        if result.layer is not None:
            from registry.gc import write_root

            with contextlib.suppress(OSError, ValueError):
                write_root(self.store, "buildcache", key.hex, [result.layer.digest])
        return result

    def _download(self, repo: Any, desc: Descriptor) -> None:
        with repo.open_blob(desc.digest) as resp, \
                self.store.ingest(expected=desc.digest, size=desc.size) as w:
            while True:
                chunk = resp.raw.read(1 << 20, decode_content=False)
                if not chunk:
                    break
                w.write(chunk)

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()
