"""gc never removes what an image, a root file (cache record, container), a live lease or an
extra root still uses; it removes the rest, abandoned ingests and stale leases."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from registry import mediatypes as mt
from registry.digest import Digest
from registry.errors import StoreCorrupt
from registry.gc import gc, lease, list_roots, prune_images, reachable, remove_root, write_root
from registry.image import StoreImage
from registry.layertar import TarEntry, write_layer
from registry.store import DirStore
from tests.support.images import tiny_image


def _blobs(store: DirStore, desc) -> set[Digest]:
    return set(StoreImage(store, desc).blobs())


def test_gc_keeps_tagged_and_dangling_images_removes_garbage(store: DirStore) -> None:
    tagged = tiny_image(store, "docker.io/library/a:1", content=b"a", layers=2)
    dangling = tiny_image(store, content=b"b")
    garbage = store.put(b"unreferenced", "application/octet-stream").digest
    orphan_layer = write_layer([TarEntry("x", "file", size=1, data=b"x")], store).descriptor.digest
    keep = _blobs(store, tagged) | _blobs(store, dangling)
    orphan_size = store.size(orphan_layer)
    result = gc(store, dry_run=True)
    assert set(result.removed) == {garbage, orphan_layer} and store.has(garbage)
    result = gc(store)
    assert set(result.removed) == {garbage, orphan_layer}
    assert result.bytes_freed == len(b"unreferenced") + orphan_size
    assert set(store.walk()) == keep
    assert gc(store).removed == ()


def test_root_files_extra_roots_and_leases_keep_blobs(store: DirStore) -> None:
    cached = write_layer([TarEntry("c", "file", size=1, data=b"c")], store).descriptor.digest
    container_img = tiny_image(store, content=b"ctr")
    store.remove_entries([container_img.digest])          # only a container still uses it
    extra = store.put(b"extra", "x").digest
    leased = store.put(b"leased", "x").digest
    write_root(store, "cache", "key1", [cached])
    write_root(store, "containers", "c0ffee", [container_img])
    with lease(store, [leased]) as path:
        assert path.is_file()
        result = gc(store, [extra])
        assert result.removed == ()
        assert {cached, extra, leased} | _blobs(store, container_img) <= set(store.walk())
    assert not path.exists()
    assert {r.kind for r in list_roots(store)} == {"cache", "containers"}
    remove_root(store, "cache", "key1")
    remove_root(store, "cache", "key1")
    result = gc(store)
    assert set(result.removed) == {cached, extra, leased}
    assert _blobs(store, container_img) <= set(store.walk())     # the container root remains


def test_stale_lease_of_a_dead_process_is_ignored(store: DirStore) -> None:
    blob = store.put(b"from a crashed build", "x").digest
    code = ("import sys; from registry.store import DirStore; from registry.gc import write_root;"
            "from registry.digest import Digest;"
            f"write_root(DirStore(sys.argv[1]), 'leases', 'dead', [Digest.parse('{blob}')],"
            " bind_to_process=True)")
    subprocess.run([sys.executable, "-c", code, str(store.root)], check=True)
    (root,) = list_roots(store)
    assert root.pid is not None and not root.alive()
    result = gc(store)
    assert result.removed == (blob,) and result.stale_roots == 1
    assert list_roots(store) == []


def test_bad_root_file_stops_gc(store: DirStore) -> None:
    blob = store.put(b"precious", "x").digest
    path = store.root / "roots" / "cache" / "broken.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(StoreCorrupt):
        gc(store)
    assert store.has(blob)
    with pytest.raises(ValueError):
        write_root(store, "Bad Kind", "x", [])
    with pytest.raises(ValueError):
        write_root(store, "cache", "../escape", [])


def test_unreadable_reachable_manifest_stops_gc(store: DirStore) -> None:
    desc = tiny_image(store, "docker.io/library/a:1", content=b"a")
    layer = StoreImage(store, desc).manifest.layers[0].digest
    store.blob_path(desc.digest).write_bytes(b'{"tampered": true}' + b" " * (desc.size - 18))
    with pytest.raises(StoreCorrupt):
        gc(store)
    assert store.has(layer)


def test_only_limits_the_sweep(store: DirStore) -> None:
    a = store.put(b"a", "x").digest
    b = store.put(b"b", "x").digest
    assert gc(store, only=[a]).removed == (a,)
    assert store.has(b)


def test_reachable_follows_indexes(store: DirStore) -> None:
    img = tiny_image(store, content=b"z")
    idx = store.put(json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": str(img.digest), "size": img.size}]}).encode(),
        mt.OCI_INDEX)
    assert reachable(store, [idx.digest]) == {idx.digest} | _blobs(store, img)


def test_prune_images(store: DirStore) -> None:
    kept = tiny_image(store, "docker.io/library/keep:1", content=b"k")
    dangling = tiny_image(store, content=b"d")
    dangling_id = StoreImage(store, dangling).id
    used = tiny_image(store, "docker.io/library/used:1", content=b"u")
    result = prune_images(store)
    assert result.untagged == () and result.deleted == (dangling_id,)
    assert not store.has(dangling.digest) and not store.has(dangling_id)
    assert result.gc.bytes_freed > 0
    result = prune_images(store, all_images=True, in_use={used.digest})
    assert result.untagged == ("docker.io/library/keep:1",)
    assert [d.digest for d in store.entries()] == [used.digest]
    assert not store.has(kept.digest) and store.has(used.digest)


def test_disk_usage(store: DirStore) -> None:
    from registry.gc import disk_usage

    a = tiny_image(store, "docker.io/library/a:1", content=b"a")
    b = tiny_image(store, "docker.io/library/b:1", content=b"b")
    layer = write_layer([TarEntry("c", "file", size=1, data=b"c")], store).descriptor
    write_root(store, "buildcache", "k1", [layer])
    du = disk_usage(store, in_use={StoreImage(store, a).id})
    a_bytes = sum(store.size(d) for d in _blobs(store, a))
    b_bytes = sum(store.size(d) for d in _blobs(store, b))
    assert (du.images, du.active_images) == (2, 1)
    assert du.image_bytes == a_bytes + b_bytes and du.image_reclaimable == b_bytes
    assert (du.cache_records, du.cache_bytes) == (1, layer.size)
