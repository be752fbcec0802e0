"""Resolving a user's image argument like docker, StoreImage accessors, platform selection,
history rows, and a fast listing."""

from __future__ import annotations

import time

import pytest

from registry import mediatypes as mt
from registry.digest import Digest
from registry.errors import AmbiguousImage, ImageNotFound, InvalidReference, NoMatchingPlatform
from registry.image import (
    StoreImage,
    default_platform,
    history_rows,
    inspect_view,
    list_images,
    platform_matches,
    resolve,
    resolve_image,
    select_manifest,
)
from registry.model import Descriptor, Index, Platform
from registry.store import DirStore
from tests.support.images import tiny_image


@pytest.fixture
def two(store: DirStore) -> tuple[DirStore, Descriptor, Descriptor]:
    a = tiny_image(store, "docker.io/library/busybox:latest", "docker.io/library/busybox:1",
                   content=b"a")
    b = tiny_image(store, "localhost:5000/team/app:v2", content=b"b", created=1_800_000_000)
    return store, a, b


def _id(store: DirStore, desc: Descriptor) -> Digest:
    return StoreImage(store, desc).id


def test_resolve_by_names(two) -> None:
    store, a, b = two
    for text in ("busybox", "busybox:latest", "library/busybox", "docker.io/library/busybox:latest",
                 "index.docker.io/library/busybox"):
        res = resolve(store, text)
        assert res.kind == "name" and res.name == "docker.io/library/busybox:latest"
        assert res.image.digest == a.digest
        assert res.image.names == ("docker.io/library/busybox:1", "docker.io/library/busybox:latest")
    assert resolve_image(store, "localhost:5000/team/app:v2").digest == b.digest
    with pytest.raises(ImageNotFound, match="no such image: busybox:2"):
        resolve(store, "busybox:2")
    with pytest.raises(ImageNotFound, match="team/app:latest"):
        resolve(store, "localhost:5000/team/app")
    with pytest.raises(InvalidReference):
        resolve(store, "Not/Valid")


def test_resolve_by_id_and_digest(two) -> None:
    store, a, b = two
    image_id = _id(store, a)
    for text in (str(image_id), image_id.hex, image_id.hex[:12], "sha256:" + image_id.hex[:8]):
        res = resolve(store, text)
        assert res.kind == "id" and res.image.id == image_id
    res = resolve(store, f"busybox@{a.digest}")
    assert res.kind == "digest" and res.image.digest == a.digest
    with pytest.raises(ImageNotFound):
        resolve(store, f"other@{a.digest}")                   # digest of another repository
    assert resolve(store, str(a.digest)).image.digest == a.digest  # a full manifest digest
    with pytest.raises(ImageNotFound):
        resolve(store, "sha256:zz")


def test_ambiguous_id_prefix(store: DirStore) -> None:
    ids = {}
    i = 0
    while True:   # find two images whose IDs share a first hex digit
        desc = tiny_image(store, f"docker.io/library/x:{i}", content=str(i).encode())
        ident = _id(store, desc)
        if ident.hex[0] in ids:
            break
        ids[ident.hex[0]] = ident
        i += 1
    with pytest.raises(AmbiguousImage, match="ambiguous"):
        resolve(store, ident.hex[0])


def test_name_wins_over_id_prefix(store: DirStore) -> None:
    desc = tiny_image(store, content=b"q")
    short = _id(store, desc).hex[:6]
    other = tiny_image(store, f"docker.io/library/{short}:latest", content=b"r")
    assert resolve(store, short).image.digest == other.digest          # the name, like docker
    assert resolve(store, "sha256:" + short).image.digest == desc.digest


def test_store_image_accessors(two) -> None:
    store, a, _ = two
    img = resolve_image(store, "busybox")
    assert img.manifest.config.digest == img.id
    assert Digest.of(img.raw_manifest()) == img.digest
    assert Digest.of(img.raw_config()) == img.id
    (layer,) = img.layers()
    assert layer.diff_id == img.config.diff_ids[0]
    import hashlib
    h = hashlib.sha256()
    with layer.open_uncompressed() as f:
        h.update(f.read())
    assert Digest.from_hasher(h) == layer.diff_id
    assert img.size == img.manifest.config.size + layer.descriptor.size
    assert set(img.blobs()) == {a.digest, img.id, layer.digest}


def test_history_rows(two) -> None:
    store, _, _ = two
    img = resolve_image(store, "busybox")
    rows = history_rows(img)
    assert [r.image_id for r in rows] == [img.id, None]
    assert rows[0].empty_layer and rows[0].size == 0
    assert rows[1].size == img.manifest.layers[0].size and "echo 0" in rows[1].created_by


def test_listing_and_inspect(two) -> None:
    store, a, b = two
    store.add_untagged(tiny_image(store, content=b"dangling"))
    listing = list_images(store)
    assert listing.problems == []
    rows = [(e.repository(), e.tag()) for e in listing.entries]
    assert rows[0] == ("localhost:5000/team/app", "v2")       # newest first
    assert ("<none>", "<none>") in rows and ("busybox", "1") in rows and ("busybox", "latest") in rows
    view = inspect_view(resolve_image(store, "busybox"))
    assert view["RepoTags"] == ["busybox:1", "busybox:latest"]
    assert view["RepoDigests"] == [f"busybox@{a.digest}"]
    assert view["Id"] == str(_id(store, a)) and view["Os"] == "linux"
    assert view["RootFS"]["Layers"] and view["Descriptor"]["digest"] == str(a.digest)
    assert view["Config"]["Cmd"] == ["sh"] and view["Config"]["Hostname"] == ""


def test_broken_entry_is_reported_not_fatal(two) -> None:
    store, a, _ = two
    cfg = StoreImage(store, a).id
    store.delete(cfg)
    listing = list_images(store)
    assert [e.repository() for e in listing.entries] == ["localhost:5000/team/app"]
    assert len(listing.problems) == 1 and "not found" in listing.problems[0][1]


def test_listing_50_images_is_fast(store: DirStore) -> None:
    for i in range(50):
        tiny_image(store, f"docker.io/library/img{i}:latest", content=str(i).encode())
    start = time.perf_counter()
    listing = list_images(store)
    elapsed = time.perf_counter() - start
    assert len(listing.entries) == 50
    assert elapsed < 0.5, f"listing 50 images took {elapsed:.3f}s"


def _index(*plats: tuple[str, str | None]) -> Index:
    return Index(mt.OCI_INDEX, tuple(
        Descriptor(mt.OCI_MANIFEST, Digest.of(f"{arch}{var}".encode()), 1,
                   platform=Platform("linux", arch, var)) for arch, var in plats))


def test_platform_selection() -> None:
    idx = _index(("amd64", None), ("arm64", "v8"), ("arm", "v6"), ("arm", "v7"))
    assert select_manifest(idx, Platform("linux", "amd64")).platform == Platform("linux", "amd64")
    assert select_manifest(idx, Platform("linux", "arm64")).platform.variant == "v8"
    assert select_manifest(idx, Platform("linux", "arm", "v7")).platform.variant == "v7"
    with pytest.raises(NoMatchingPlatform, match="linux/amd64, linux/arm/v6"):
        select_manifest(idx, Platform("linux", "s390x"))
    assert platform_matches(Platform("linux", "arm64", "v8"), Platform("linux", "arm64"))
    assert not platform_matches(Platform("linux", "arm", "v6"), Platform("linux", "arm"))
    assert default_platform().os == "linux"
    attest = Index(mt.OCI_INDEX, (Descriptor(mt.OCI_MANIFEST, Digest.of(b"u"), 1,
                                             {"vnd.docker.reference.type": "attestation-manifest"},
                                             Platform("unknown", "unknown")),))
    with pytest.raises(NoMatchingPlatform):
        select_manifest(attest, Platform("linux", "amd64"))


def test_tag_pointing_at_an_index(store: DirStore) -> None:
    arm = tiny_image(store, content=b"arm")
    here = tiny_image(store, content=b"here")
    store.remove_entries([arm.digest, here.digest])
    other = Platform("linux", "riscv64" if default_platform().architecture != "riscv64" else "s390x")
    idx = Index(mt.OCI_INDEX, (Descriptor(mt.OCI_MANIFEST, arm.digest, arm.size, platform=other),
                               Descriptor(mt.OCI_MANIFEST, here.digest, here.size,
                                          platform=default_platform())))
    desc = store.put(idx.to_json(), mt.OCI_INDEX)
    store.tag("docker.io/library/multi:latest", desc)
    img = resolve_image(store, "multi")
    assert img.target.digest == desc.digest and img.digest == here.digest
    assert resolve_image(store, "multi", platform=other).digest == arm.digest
    assert resolve(store, f"multi@{arm.digest}").image.digest == arm.digest
    assert [e.image.digest for e in list_images(store).entries] == [here.digest]
