"""Image → snapshot chain → container rootfs (DESIGN §2.4): each layer is unpacked once, ever,
into a committed snapshot named by its ChainID (a per-ChainID lock serialises concurrent
callers). Unpacking verifies the blob digest and the diff_id while streaming; on a mismatch
the partial snapshot is removed first. Imports: registry (store, model, compression), runtime.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from registry.digest import Digest
from registry.model import Descriptor, ImageConfig, Manifest, chain_ids
from runtime.errors import LayerError

if TYPE_CHECKING:
    from registry.store import DirStore
    from runtime.snapshots import Mount, Snapshotter
    from runtime.unpack import UnpackStats

# registry.compression, runtime.unpack and logging are imported only when a layer must be
# unpacked: `pybuild run` of an image already unpacked never needs them (start-up time).

EXTRACT_LABEL = "pybuild.extract"


@dataclass(frozen=True, slots=True)
class ChainResult:
    """What ensure_chain did: the top snapshot key and which layers it had to unpack."""

    top: str | None
    chain: tuple[str, ...]
    unpacked: tuple[str, ...]
    reused: tuple[str, ...]
    seconds: float
    stats: tuple[UnpackStats, ...] = ()


class _Hashing:
    """Hashes everything read through it (the diff_id of the uncompressed layer)."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner
        self.hasher = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self.hasher.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True


def image_config(store: DirStore, manifest: Manifest) -> ImageConfig:
    return ImageConfig.from_json(store.read(manifest.config.digest))


def unpack_layer(store: DirStore, snapshotter: Snapshotter, key: str, desc: Descriptor,
                 diff_id: Digest, *, rootless: bool | None = None) -> UnpackStats:
    """Stream blob ``desc`` from the store into active snapshot ``key``, verifying the blob
    digest and ``diff_id``. Raises DigestMismatch/LayerError; the caller removes ``key``."""
    import io

    from registry.compression import open_sniffed
    from runtime.unpack import RawAdapter, ReadAhead

    with store.open(desc.digest) as raw:
        # The codec comes from the bytes, not the media type (docker sniffs too); the
        # diff_id check below still pins the content.
        _, plain = open_sniffed(io.BufferedReader(RawAdapter(raw), 1 << 20))  # type: ignore[arg-type]
        hashed = _Hashing(plain)
        ahead = ReadAhead(hashed)          # type: ignore[arg-type]
        try:
            stats = snapshotter.apply_layer(key, ahead, layer=str(desc.digest), rootless=rootless)  # type: ignore[arg-type]
        finally:
            ahead.close()
        raw.verify_rest()
    got = Digest.from_hasher(hashed.hasher)
    if got != diff_id:
        raise LayerError(str(desc.digest), "", f"uncompressed content has digest {got}, "
                         f"the image config says {diff_id}")
    return stats


def ensure_chain_report(store: DirStore, snapshotter: Snapshotter, manifest: Manifest, *,
                        rootless: bool | None = None, config: ImageConfig | None = None) -> ChainResult:
    """Make sure every layer of ``manifest`` is a committed snapshot named by its ChainID.

    Idempotent; layers already present are reused without reading their blobs. Holds the
    store lock shared (gc waits) and a per-ChainID lock while unpacking.
    """
    started = time.perf_counter()
    config = config or image_config(store, manifest)
    if len(config.diff_ids) != len(manifest.layers):
        raise LayerError(str(manifest.config.digest), "",
                         f"image has {len(manifest.layers)} layers but {len(config.diff_ids)} diff_ids")
    chain = [str(c) for c in chain_ids(config.diff_ids)]
    unpacked: list[str] = []
    reused: list[str] = []
    stats: list[UnpackStats] = []
    parent: str | None = None
    with store.lock(shared=True):
        if chain and snapshotter.exists(chain[-1]):
            # the common case (every run after the first): the top ChainID names the whole
            # stack, and a committed snapshot cannot lose its ancestors (remove refuses a
            # parent), so one lookup replaces one metadata read per layer
            return ChainResult(chain[-1], tuple(chain), (), tuple(chain), time.perf_counter() - started)
        for desc, diff_id, key in zip(manifest.layers, config.diff_ids, chain, strict=True):
            if snapshotter.exists(key):
                reused.append(key)
                parent = key
                continue
            with snapshotter.key_lock(key):
                if snapshotter.exists(key):          # another caller finished it meanwhile
                    reused.append(key)
                    parent = key
                    continue
                _remove_stale_extracts(snapshotter, key)
                tmp = f"extract-{os.urandom(6).hex()}-{key[7:19]}"
                snapshotter.prepare(tmp, parent, labels={EXTRACT_LABEL: key})
                try:
                    t0 = time.perf_counter()
                    st = unpack_layer(store, snapshotter, tmp, desc, diff_id, rootless=rootless)
                    snapshotter.commit(key, tmp)
                except BaseException:
                    with contextlib.suppress(Exception):
                        snapshotter.remove(tmp)
                    raise
                import logging

                logging.getLogger("pybuild." + __name__).info(
                    "unpacked layer %s (%d entries, %d bytes) in %.2fs", desc.digest, st.entries,
                    st.bytes, time.perf_counter() - t0)
                stats.append(st)
                unpacked.append(key)
                parent = key
    return ChainResult(parent, tuple(chain), tuple(unpacked), tuple(reused),
                       time.perf_counter() - started, tuple(stats))


def _remove_stale_extracts(snapshotter: Snapshotter, key: str) -> None:
    """An earlier unpack of ``key`` that was killed left its active snapshot; we hold the key
    lock, so nobody else is extracting it now."""
    for info in list(snapshotter.walk()):
        if info.kind == "active" and info.labels.get(EXTRACT_LABEL) == key:
            with contextlib.suppress(Exception):
                snapshotter.remove(info.key)


def ensure_chain(store: DirStore, snapshotter: Snapshotter, manifest: Manifest, *,
                 rootless: bool | None = None, config: ImageConfig | None = None) -> str | None:
    """The top ChainID key of the image's committed snapshot chain (None for no layers)."""
    return ensure_chain_report(store, snapshotter, manifest, rootless=rootless, config=config).top


def prepare_rootfs(store: DirStore, snapshotter: Snapshotter, manifest: Manifest, key: str, *,
                   rootless: bool | None = None, ephemeral: bool = False,
                   config: ImageConfig | None = None) -> list[Mount]:
    """An active snapshot ``key`` on top of the image: the mounts of a container's rootfs.
    ``ephemeral``: see Snapshotter.prepare (the layer of a foreground ``run --rm``);
    ``config``: the image config when the caller has it already (else read from the store)."""
    top = ensure_chain(store, snapshotter, manifest, rootless=rootless, config=config)
    if ephemeral:
        return snapshotter.prepare(key, top, ephemeral=True)
    return snapshotter.prepare(key, top)


def load_manifest(store: DirStore, desc: Descriptor) -> Manifest:
    return Manifest.from_json(store.read(desc.digest), media_type=desc.media_type)
