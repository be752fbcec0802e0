"""Store garbage collection: mark from the roots (index.json entries, ``roots/<kind>/<name>.json`` files
of upper layers, caller's extra roots; a manifest or index keeps everything below it), sweep the rest.
A root leased to a process is dropped once it is gone. gc holds the store lock exclusively, writers
hold it shared, so a running pull/build never loses untagged blobs. Imports registry only."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry import mediatypes as mt
from registry.digest import Digest
from registry.errors import BlobNotFound, InvalidDigest, RegistryError, StoreCorrupt
from registry.model import Descriptor, canonical_json
from registry.store import MAX_JSON_BLOB, REF_NAME, DirStore, atomic_write

ROOTS_DIR = "roots"
LEASES = "leases"
_KIND_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# -- root files ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Root:
    """One root file: ``digests`` (manifests, indexes, configs or layers) that gc must keep."""

    kind: str
    name: str
    digests: tuple[Digest, ...]
    pid: int | None = None
    pid_start: str | None = None
    path: Path | None = field(default=None, compare=False)

    def alive(self) -> bool:
        """False for a process-bound root whose process has exited (or whose pid was reused)."""
        if self.pid is None:
            return True
        return _process_start(self.pid) == self.pid_start


def _process_start(pid: int) -> str | None:
    """The start time (clock ticks since boot) of ``pid``; None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _root_path(store: DirStore, kind: str, name: str) -> Path:
    if not _KIND_RE.match(kind):
        raise ValueError(f"bad gc root kind {kind!r}: want [a-z0-9._-]")
    if not _NAME_RE.match(name):
        raise ValueError(f"bad gc root name {name!r}: want [A-Za-z0-9._-]")
    return store.root / ROOTS_DIR / kind / f"{name}.json"


def write_root(store: DirStore, kind: str, name: str, digests: Iterable[Digest | Descriptor], *,
               bind_to_process: bool = False) -> Path:
    """Create or replace the root ``kind/name`` (atomic). With ``bind_to_process`` the root
    lives only as long as the calling process. Returns the file's path."""
    path = _root_path(store, kind, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, object] = {
        "digests": sorted({str(d.digest if isinstance(d, Descriptor) else d) for d in digests}),
    }
    if bind_to_process:
        pid = os.getpid()
        doc["pid"] = pid
        doc["pid_start"] = _process_start(pid)
    atomic_write(path, canonical_json(doc))
    return path


def remove_root(store: DirStore, kind: str, name: str) -> None:
    """Drop a root; idempotent."""
    with contextlib.suppress(FileNotFoundError):
        _root_path(store, kind, name).unlink()


def list_roots(store: DirStore) -> list[Root]:
    """Every root file. A malformed one is a StoreCorrupt error: gc must not guess."""
    base = store.root / ROOTS_DIR
    out: list[Root] = []
    if not base.is_dir():
        return out
    for kind_dir in sorted(base.iterdir()):
        if not kind_dir.is_dir() or not _KIND_RE.match(kind_dir.name):
            continue
        for path in sorted(kind_dir.glob("*.json")):
            try:
                doc = json.loads(path.read_bytes())
                digests = tuple(Digest.parse(str(d)) for d in doc.get("digests") or ())
                pid = doc.get("pid")
            except FileNotFoundError:
                continue
            except (ValueError, AttributeError, InvalidDigest) as exc:
                raise StoreCorrupt(str(path), f"unreadable gc root ({exc})") from None
            out.append(Root(kind_dir.name, path.name[:-len(".json")], digests,
                            int(pid) if pid is not None else None, doc.get("pid_start"), path))
    return out


@contextlib.contextmanager
def lease(store: DirStore, digests: Iterable[Digest | Descriptor], *,
          name: str | None = None) -> Iterator[Path]:
    """Keep ``digests`` (and what they reference) alive for the block; the lease file is bound
    to this process, so a crash leaves nothing that protects garbage forever."""
    name = name or f"{os.getpid()}-{secrets.token_hex(4)}"
    path = write_root(store, LEASES, name, digests, bind_to_process=True)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# -- mark --------------------------------------------------------------------------------------
def _sniff_json(store: DirStore, digest: Digest) -> dict[str, Any] | None:
    """The parsed document if ``digest`` is a small JSON object, else None (layers, configs
    are returned too: the caller decides by shape)."""
    try:
        size = store.size(digest)
    except BlobNotFound:
        return None
    if size > MAX_JSON_BLOB or size < 2:
        return None
    with open(store.blob_path(digest), "rb") as f:
        if f.read(1) != b"{":
            return None
    raw = store.read(digest)
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _children(doc: dict[str, Any]) -> list[Descriptor]:
    out: list[Descriptor] = []
    manifests = doc.get("manifests")
    if isinstance(manifests, list):
        out += [Descriptor.from_dict(d) for d in manifests]
    config, layers = doc.get("config"), doc.get("layers")
    if isinstance(config, dict) and isinstance(layers, list):
        out.append(Descriptor.from_dict(config))
        out += [Descriptor.from_dict(d) for d in layers]
    return out


def reachable(store: DirStore, roots: Iterable[Digest | Descriptor]) -> set[Digest]:
    """Every stored blob reachable from ``roots`` (manifests and indexes are followed).

    Raises StoreCorrupt if a reachable manifest or index cannot be read: collecting below a
    document we cannot parse could delete what it references.
    """
    marked: set[Digest] = set()
    stack: list[tuple[Digest, str | None]] = []
    for r in roots:
        if isinstance(r, Descriptor):
            stack.append((r.digest, r.media_type or None))
        else:
            stack.append((r, None))
    while stack:
        digest, media = stack.pop()
        if digest in marked or not store.has(digest):
            continue
        marked.add(digest)
        if media is not None and (mt.is_layer(media) or media in mt.CONFIGS):
            continue
        try:
            doc = _sniff_json(store, digest)
        except RegistryError as exc:
            raise StoreCorrupt(str(store.blob_path(digest)), f"cannot read reachable blob ({exc})") from None
        if doc is None:
            continue
        try:
            kids = _children(doc)
        except RegistryError as exc:
            raise StoreCorrupt(str(store.blob_path(digest)), f"bad manifest ({exc})") from None
        stack += [(d.digest, d.media_type or None) for d in kids]
    return marked


def root_digests(store: DirStore, extra_roots: Iterable[Digest | Descriptor] = (), *,
                 drop_stale: bool = False) -> tuple[list[Digest | Descriptor], int]:
    """All roots (index entries, live root files, extras) and the number of stale roots seen
    (removed when ``drop_stale``)."""
    out: list[Digest | Descriptor] = list(store.entries())
    stale = 0
    for root in list_roots(store):
        if root.alive():
            out += root.digests
            continue
        stale += 1
        if drop_stale and root.path is not None:
            with contextlib.suppress(FileNotFoundError):
                root.path.unlink()
    out += list(extra_roots)
    return out, stale


# -- sweep -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GCResult:
    removed: tuple[Digest, ...]
    bytes_freed: int
    kept: int
    ingest_swept: int
    stale_roots: int


def gc(store: DirStore, extra_roots: Iterable[Digest | Descriptor] = (), *, dry_run: bool = False,
       only: Iterable[Digest] | None = None, blocking: bool = True,
       timeout: float | None = None) -> GCResult:
    """Delete every blob that no root reaches; sweep abandoned ingests and stale leases.

    ``only`` limits the sweep to those candidate blobs (what ``rmi`` just unreferenced) and
    skips the ingest sweep. Takes the store lock exclusively (StoreBusy when ``blocking`` is
    False or ``timeout`` expires). Never removes a blob reachable from index.json, a live root
    file or ``extra_roots``.
    """
    with store.lock(shared=False, blocking=blocking, timeout=timeout):
        roots, stale = root_digests(store, extra_roots, drop_stale=not dry_run)
        keep = reachable(store, roots)
        candidates = set(store.walk()) if only is None else {d for d in only if store.has(d)}
        removed: list[Digest] = []
        freed = 0
        for digest in sorted(candidates - keep):
            try:
                size = store.size(digest)
            except BlobNotFound:
                continue
            if not dry_run:
                store.delete(digest)
            removed.append(digest)
            freed += size
        swept = store.sweep_ingest() if only is None and not dry_run else 0
    return GCResult(tuple(removed), freed, len(keep), swept, stale)


@dataclass(frozen=True, slots=True)
class PruneResult:
    untagged: tuple[str, ...]          # full references removed
    deleted: tuple[Digest, ...]        # image IDs (config digests) no longer in the store
    gc: GCResult


def prune_images(store: DirStore, *, all_images: bool = False,
                 in_use: Iterable[Digest] = (), extra_roots: Iterable[Digest | Descriptor] = (),
                 blocking: bool = True, timeout: float | None = None) -> PruneResult:
    """``image prune``: drop dangling (untagged) images, or with ``all_images`` every image
    whose target, manifest or config is not in ``in_use`` (what containers run), then collect
    blobs. One exclusive hold of the store lock covers both steps."""
    from registry.image import StoreImage

    busy = set(in_use)
    extra = list(extra_roots)
    with store.lock(shared=False, blocking=blocking, timeout=timeout):
        entries = store.entries()
        info: dict[Digest, tuple[Digest | None, set[Digest]]] = {}   # target -> (ID, identities)
        for desc in entries:
            if desc.digest in info:
                continue
            try:
                image = StoreImage(store, desc)
                info[desc.digest] = (image.id, {desc.digest, image.digest, image.id})
            except RegistryError:
                info[desc.digest] = (None, {desc.digest})

        def key(d: Descriptor) -> tuple[Digest, str | None]:
            return d.digest, d.annotations.get(REF_NAME)

        drop = [d for d in entries if not (info[d.digest][1] & busy)
                and (all_images or REF_NAME not in d.annotations)]
        dropped = {key(d) for d in drop}
        store.update_index(lambda current: [d for d in current if key(d) not in dropped])
        kept_ids = {info[d.digest][0] for d in entries if key(d) not in dropped}
        deleted = tuple(dict.fromkeys(i for d in drop if (i := info[d.digest][0]) is not None
                                      and i not in kept_ids))
        untagged = tuple(d.annotations[REF_NAME] for d in drop if REF_NAME in d.annotations)
        result = gc(store, extra)
    return PruneResult(untagged, deleted, result)


@dataclass(frozen=True, slots=True)
class DiskUsage:
    images: int                 # distinct images (index.json targets)
    active_images: int          # of those, used by containers
    image_bytes: int            # blobs images reference, each counted once
    image_reclaimable: int      # of those, bytes no active image references
    cache_records: int          # live root files of the cache kinds
    cache_bytes: int            # blobs only cache records keep


def disk_usage(store: DirStore, *, in_use: Iterable[Digest] = (),
               cache_kinds: Iterable[str] = ("cache", "buildcache")) -> DiskUsage:
    """What `system df` reports. Reads manifests and root files, never layer contents."""
    from registry.image import images as all_images

    busy = set(in_use)
    kinds = set(cache_kinds)
    image_blobs: dict[Digest, int] = {}
    active_blobs: set[Digest] = set()
    count = active = 0
    for image in all_images(store):
        try:
            blobs = image.blobs()
            sizes = {d.digest: d.size for d in (image.manifest.config, *image.manifest.layers)}
        except RegistryError:
            continue
        count += 1
        for b in blobs:
            if store.has(b):
                image_blobs[b] = sizes.get(b) or store.size(b)
        if {image.target.digest, image.digest, image.id} & busy:
            active += 1
            active_blobs.update(blobs)
    records = [r for r in list_roots(store) if r.alive() and r.kind in kinds]
    cache_only = reachable(store, [d for r in records for d in r.digests]) - set(image_blobs)
    return DiskUsage(count, active, sum(image_blobs.values()),
                     sum(s for d, s in image_blobs.items() if d not in active_blobs),
                     len(records), sum(store.size(d) for d in cache_only))
