"""Image → ChainID snapshots → rootfs: each layer unpacked once (also with concurrent callers),
verified while streaming (blob digest and diff_id), partial snapshots removed on failure."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from registry.errors import DigestMismatch
from registry.imagebuild import store_image
from registry.layertar import TarEntry, opaque, whiteout, write_layer
from registry.model import ContainerConfig, Digest, History, ImageConfig, Manifest
from registry.store import DirStore
from runtime.errors import LayerError
from runtime.rootfs import ensure_chain, ensure_chain_report, load_manifest, prepare_rootfs
from runtime.snapshots import CopySnapshotter, OverlaySnapshotter, Snapshotter
from tests.runtime.snaphelp import mounted_ops
from tests.support.images import StoredImage


def _snapshotter(kind: str, root: Path) -> Snapshotter:
    return OverlaySnapshotter(root) if kind == "overlay" else CopySnapshotter(root)


def _three_layer_image(store: DirStore) -> Manifest:
    layers = [
        write_layer([TarEntry("etc", "dir", mode=0o755), TarEntry("etc/a", "file", data=b"a", size=1),
                     TarEntry("var", "dir"), TarEntry("var/old", "file", data=b"o", size=1),
                     TarEntry("opt", "dir"), TarEntry("opt/x", "file", data=b"x", size=1)], store, "gzip"),
        write_layer([whiteout("etc/a"), TarEntry("var", "dir"), opaque("var"),
                     TarEntry("var/new", "file", data=b"n", size=1)], store, "zstd"),
        write_layer([TarEntry("opt/y", "file", data=b"y", size=1), whiteout("opt/x")], store, "none"),
    ]
    config = ImageConfig("amd64", "linux", ContainerConfig(), tuple(lay.diff_id for lay in layers),
                         tuple(History(created_by=f"layer {i}") for i in range(3)))
    desc = store_image(store, config, layers, tags=["example.com/three:1"])
    return load_manifest(store, desc)


@pytest.mark.parametrize("kind", ["overlay", "copy"])
def test_second_ensure_unpacks_nothing(kind: str, busybox_store: StoredImage, tmp_path: Path) -> None:
    store = busybox_store.store
    manifest = load_manifest(store, busybox_store.desc)
    sn = _snapshotter(kind, store.subdir("snapshots"))
    first = ensure_chain_report(store, sn, manifest)
    assert len(first.unpacked) == 1 and first.reused == ()
    assert (sn.path(first.top) / "bin" / "busybox").is_file()  # type: ignore[arg-type]
    second = ensure_chain_report(store, sn, manifest)
    assert second.unpacked == () and second.reused == first.chain
    assert second.top == first.top
    # a fresh process-level view of the same store reuses it too
    again = ensure_chain_report(store, _snapshotter(kind, store.root / "snapshots"), manifest)
    assert again.unpacked == ()


@pytest.mark.parametrize("kind", ["overlay", "copy"])
def test_concurrent_callers_unpack_once(kind: str, busybox_store: StoredImage) -> None:
    store = busybox_store.store
    manifest = load_manifest(store, busybox_store.desc)
    results = []

    def worker() -> None:
        sn = _snapshotter(kind, store.root / "snapshots")
        results.append(ensure_chain_report(store, sn, manifest))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(len(r.unpacked) for r in results) == 1
    assert len({r.top for r in results}) == 1


@pytest.mark.parametrize("kind", ["overlay", "copy"])
def test_multi_layer_chain(kind: str, store: DirStore, tmp_path: Path) -> None:
    manifest = _three_layer_image(store)
    sn = _snapshotter(kind, tmp_path / "snaps")
    report = ensure_chain_report(store, sn, manifest)
    assert len(report.unpacked) == 3
    assert [i.key for i in sn.chain(report.top)] == list(reversed(report.chain))  # type: ignore[attr-defined, arg-type]
    if kind == "copy":
        top = sn.path(report.top)  # type: ignore[arg-type]
        assert sorted(str(p.relative_to(top)) for p in top.rglob("*")) == [
            "etc", "opt", "opt/y", "var", "var/new"]


@pytest.mark.needs_root
@pytest.mark.parametrize("kind", ["overlay", "copy"])
def test_prepared_rootfs_shows_the_image(kind: str, store: DirStore, tmp_path: Path) -> None:
    if kind == "overlay":
        from tests.conftest import have_overlay, skip_or_fail

        if not have_overlay():
            skip_or_fail("overlayfs cannot be mounted here")
    manifest = _three_layer_image(store)
    sn = _snapshotter(kind, tmp_path / "snaps")
    mounts = prepare_rootfs(store, sn, manifest, "container-1")
    (seen,) = mounted_ops(mounts, [["tree"]])
    assert sorted(k for k in seen if k != ".") == ["etc", "opt", "opt/y", "var", "var/new"]


def test_corrupt_blob_is_refused_and_cleaned_up(store: DirStore, tmp_path: Path) -> None:
    manifest = _three_layer_image(store)
    victim = store.blob_path(manifest.layers[2].digest)     # the uncompressed layer
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF                                        # in the end-of-archive padding
    victim.write_bytes(bytes(data))
    sn = OverlaySnapshotter(tmp_path / "snaps")
    with pytest.raises(DigestMismatch):
        ensure_chain(store, sn, manifest)
    keys = [i.key for i in sn.walk()]
    assert len(keys) == 2 and not any(k.startswith("extract-") for k in keys)  # nothing partial
    assert [p.name for p in (tmp_path / "snaps").iterdir() if p.name.startswith(".")] == []


def test_wrong_diff_id_is_refused_and_cleaned_up(store: DirStore, tmp_path: Path) -> None:
    good = write_layer([TarEntry("f", "file", data=b"x", size=1)], store, "gzip")
    bogus = Digest.of(b"not the diff id")
    config = ImageConfig("amd64", "linux", ContainerConfig(), (bogus,))
    from dataclasses import replace

    desc = store_image(store, config, [replace(good, diff_id=bogus)], tags=["example.com/bad:1"])
    sn = CopySnapshotter(tmp_path / "snaps")
    with pytest.raises(LayerError, match="diff_id|image config says"):
        ensure_chain(store, sn, load_manifest(store, desc))
    assert list(sn.walk()) == []


def test_stale_extract_from_a_killed_unpack_is_removed(busybox_store: StoredImage) -> None:
    store = busybox_store.store
    manifest = load_manifest(store, busybox_store.desc)
    sn = OverlaySnapshotter(store.root / "snapshots")
    config = ImageConfig.from_json(store.read(manifest.config.digest))
    chain = str(config.diff_ids[0])
    sn.prepare("extract-dead-beef", None, labels={"pybuild.extract": chain})
    (sn.path("extract-dead-beef") / "half-written").write_text("x")
    report = ensure_chain_report(store, sn, manifest)
    assert report.unpacked == (chain,)
    assert [i.key for i in sn.walk()] == [chain]


def test_image_without_layers(store: DirStore, tmp_path: Path) -> None:
    config = ImageConfig("amd64", "linux", ContainerConfig())
    desc = store_image(store, config, [], tags=["example.com/empty:1"])
    sn = CopySnapshotter(tmp_path / "snaps")
    assert ensure_chain(store, sn, load_manifest(store, desc)) is None
    mounts = prepare_rootfs(store, sn, load_manifest(store, desc), "c")
    assert mounts[0].type == "bind" and list(sn.path("c").iterdir()) == []


# -- decompression bombs: a small blob that unpacks to far more than a layer can ------------------
def _zero_file_layer(store: DirStore, size: int) -> Manifest:
    """A zstd layer holding one ``size``-byte file of zeros, streamed (never held in memory);
    its diff_id is the real one, so only the size cap can stop it."""
    import hashlib
    import tarfile

    import zstandard

    from registry import mediatypes as mt
    from registry.layertar import LayerBlob
    from registry.model import Descriptor

    info = tarfile.TarInfo("zeros")
    info.size, info.mode = size, 0o644
    head = info.tobuf(format=tarfile.PAX_FORMAT)
    block = bytes(1 << 20)
    diff = hashlib.sha256()
    with store.ingest() as blob, zstandard.ZstdCompressor(level=1).stream_writer(blob, closefd=False) as z:
        def put(data: bytes) -> None:
            diff.update(data)
            z.write(data)
        put(head)
        left = size
        while left:
            put(block[:min(left, len(block))])
            left -= min(left, len(block))
        put(bytes(-size % 512 + 1024))
    d = blob.descriptor_info
    layer = LayerBlob(Descriptor(mt.layer_type("zstd"), d.digest, d.size), Digest.from_hasher(diff), 0)
    config = ImageConfig("amd64", "linux", ContainerConfig(), (layer.diff_id,))
    return load_manifest(store, store_image(store, config, [layer], tags=["example.com/bomb:1"]))


def test_layer_cap_is_a_ratio_with_a_floor_and_an_override() -> None:
    from runtime.rootfs import LAYER_FLOOR, layer_cap

    assert layer_cap(1000, None) == LAYER_FLOOR                 # small blobs: 1 GiB
    assert layer_cap(100 << 20, None) == 200 * (100 << 20)      # large ones: 200x
    assert layer_cap(1000, 5 << 20) == 5 << 20                  # $PYBUILD_MAX_LAYER_SIZE
    assert layer_cap(1000, 0) is None                           # 0: no cap


@pytest.mark.slow
def test_decompression_bomb_is_refused_and_nothing_is_left(store: DirStore, tmp_path: Path) -> None:
    manifest = _zero_file_layer(store, (1 << 30) + (64 << 20))   # 1.06 GiB of zeros in a tiny blob
    assert manifest.layers[0].size < 1 << 20
    sn = OverlaySnapshotter(tmp_path / "snaps")
    with pytest.raises(LayerError, match="decompresses to more than 1073741824 bytes") as err:
        ensure_chain(store, sn, manifest)
    assert str(manifest.layers[0].digest) in str(err.value)
    assert "PYBUILD_MAX_LAYER_SIZE" in (err.value.hint or "")
    assert list(sn.walk()) == []                                  # the partial extract is gone
    assert [p.name for p in (tmp_path / "snaps").rglob("zeros")] == []


def test_max_layer_size_env_caps_and_lifts(store: DirStore, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = _zero_file_layer(store, 3 << 20)
    monkeypatch.setenv("PYBUILD_MAX_LAYER_SIZE", "2m")
    with pytest.raises(LayerError, match="more than 2097152 bytes"):
        ensure_chain(store, CopySnapshotter(tmp_path / "a"), manifest)
    monkeypatch.setenv("PYBUILD_MAX_LAYER_SIZE", "0")
    top = ensure_chain(store, CopySnapshotter(tmp_path / "b"), manifest)
    assert (CopySnapshotter(tmp_path / "b").path(top) / "zeros").stat().st_size == 3 << 20
    monkeypatch.setenv("PYBUILD_MAX_LAYER_SIZE", "lots")
    from runtime.errors import SandboxError

    with pytest.raises(SandboxError, match="PYBUILD_MAX_LAYER_SIZE"):
        ensure_chain(store, CopySnapshotter(tmp_path / "c"), manifest)
