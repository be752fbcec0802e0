"""Fault injection against the in-process fake registry: what the client does when the network
or the registry misbehaves (DESIGN C13 layer 2)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from registry import mediatypes as mt
from registry.digest import Digest
from registry.errors import ImageNotFound
from registry.remote.auth import Credentials
from registry.remote.config import RegistriesConfig
from registry.remote.errors import BlobVerifyError, ManifestError, PlatformNotFound, RemoteError
from registry.remote.pull import pull_image
from registry.remote.push import push_image
from registry.store import DirStore
from tests.registry.remote.conftest import FakeImage, fast_remote, make_image
from tests.support.fakeregistry import FakeRegistry

REPO_ROOT = Path(__file__).resolve().parents[3]


def _pull(store: DirStore, ref: str, **kw: object):  # type: ignore[no-untyped-def]
    with fast_remote() as remote:
        return pull_image(store, ref, remote=remote, **kw)  # type: ignore[arg-type]


def test_pull_roundtrip_keeps_exact_manifest_bytes(fake_registry: FakeRegistry, store: DirStore) -> None:
    img = make_image(fake_registry, "app/x", layer_sizes=(300_000, 5))
    res = _pull(store, f"{fake_registry.host}/app/x:latest")
    assert str(res.descriptor.digest) == img.digest
    assert store.read(res.descriptor.digest) == img.manifest  # indent=2: not re-serialized
    assert store.resolve(f"{fake_registry.host}/app/x:latest").digest == res.descriptor.digest
    for d, data in zip(img.layers, img.layer_data, strict=True):
        assert store.read(Digest.parse(d), max_size=1 << 30) == data
    gets = fake_registry.seen("GET", "/manifests/latest")
    assert gets and "application/vnd.oci.image.index.v1+json" in gets[0].headers["accept"]
    assert "application/vnd.docker.distribution.manifest.list.v2+json" in gets[0].headers["accept"]
    assert gets[0].headers["accept-encoding"] == "identity"
    assert gets[0].headers["user-agent"].startswith("pybuild/")
    # a second pull fetches no blob again
    before = len(fake_registry.seen("GET", "/blobs/"))
    res2 = _pull(store, f"{fake_registry.host}/app/x:latest")
    assert res2.blobs_fetched == 0 and res2.blobs_skipped == 3 and res2.up_to_date
    assert len(fake_registry.seen("GET", "/blobs/")) == before


def test_digest_mismatch_stores_nothing_and_names_the_blob(
    fake_registry: FakeRegistry, store: DirStore
) -> None:
    img = make_image(fake_registry, "app/bad", layer_sizes=(100_000,))
    fake_registry.corrupt.add(img.layers[0])
    with pytest.raises(BlobVerifyError) as info:
        _pull(store, f"{fake_registry.host}/app/bad:latest")
    assert img.layers[0] in str(info.value)
    assert not store.has(Digest.parse(img.layers[0]))
    assert store.refs() == []
    assert [p for p in store.ingest_dir.iterdir() if p.stat().st_size] == []


@pytest.mark.parametrize("mode", ["reset", "short"])
def test_interrupted_download_resumes_with_range(
    fake_registry: FakeRegistry, store: DirStore, mode: str
) -> None:
    size = 3_000_000
    img = make_image(fake_registry, "app/big", layer_sizes=(size,))
    fake_registry.cut(img.layers[0], after=1_000_000, mode=mode)
    res = _pull(store, f"{fake_registry.host}/app/big:latest", jobs=1)
    assert store.has(Digest.parse(img.layers[0]))
    gets = fake_registry.seen("GET", f"/blobs/{img.layers[0]}")
    assert len(gets) == 2
    assert "range" not in gets[0].headers
    start = int(gets[1].headers["range"].removeprefix("bytes=").rstrip("-"))
    if mode == "short":
        assert start == 1_000_000
    assert 0 < start <= 1_000_000
    assert gets[1].sent == size - start  # only the missing bytes were sent again
    assert res.downloaded == size + len(fake_registry.blobs[img.config])


def test_resume_after_the_process_was_killed(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    size = 2_000_000
    img = make_image(fake_registry, "app/kill", layer_sizes=(size,))
    fake_registry.cut(img.layers[0], after=700_000, mode="stall")
    root = tmp_path / "store"
    code = (
        "import sys; from registry.store import DirStore; from registry.remote.pull import pull; "
        "from registry.remote.config import RegistriesConfig; from registry.remote.client import Remote; "
        f"pull(DirStore({str(root)!r}), {f'{fake_registry.host}/app/kill:latest'!r}, jobs=1, "
        "remote=Remote(RegistriesConfig.from_dict({})))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stderr=subprocess.PIPE)
    partial = root / "ingest" / f"k-pull-{img.layers[0].removeprefix('sha256:')}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if partial.exists() and partial.stat().st_size >= 700_000:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.stderr is not None
    proc.stderr.close()
    fake_registry.release.set()
    assert partial.stat().st_size == 700_000
    store = DirStore(root)
    res = _pull(store, f"{fake_registry.host}/app/kill:latest")
    gets = fake_registry.seen("GET", f"/blobs/{img.layers[0]}")
    assert gets[-1].headers["range"] == "bytes=700000-"
    assert gets[-1].sent == size - 700_000
    assert store.has(Digest.parse(img.layers[0])) and not partial.exists()
    assert str(res.descriptor.digest) == img.digest


def test_500_then_200_succeeds(fake_registry: FakeRegistry, store: DirStore) -> None:
    img = make_image(fake_registry, "app/flaky")
    fake_registry.fail("GET", "/manifests/latest", 500)
    fake_registry.fail("GET", f"/blobs/{img.layers[0]}", 503)
    res = _pull(store, f"{fake_registry.host}/app/flaky:latest")
    assert str(res.descriptor.digest) == img.digest
    assert len(fake_registry.seen("GET", "/manifests/latest")) == 2
    assert len(fake_registry.seen("GET", f"/blobs/{img.layers[0]}")) == 2


def test_persistent_500_fails_with_a_named_error(fake_registry: FakeRegistry, store: DirStore) -> None:
    make_image(fake_registry, "app/down")
    fake_registry.fail(
        "GET",
        "/manifests/latest",
        500,
        times=10,
        body=b'{"errors":[{"code":"UNKNOWN","message":"storage exploded"}]}',
    )
    with pytest.raises(RemoteError) as info:
        _pull(store, f"{fake_registry.host}/app/down:latest")
    assert "500" in str(info.value) and "storage exploded" in str(info.value)
    assert len(fake_registry.seen("GET", "/manifests/latest")) == 3  # bounded: 3 attempts


def test_429_retry_after_is_honoured(fake_registry: FakeRegistry, store: DirStore) -> None:
    img = make_image(fake_registry, "app/slow")
    fake_registry.fail("GET", "/manifests/latest", 429, headers={"Retry-After": "1"})
    t0 = time.monotonic()
    res = _pull(store, f"{fake_registry.host}/app/slow:latest")
    assert time.monotonic() - t0 >= 1.0
    assert str(res.descriptor.digest) == img.digest


def test_redirect_to_another_host_never_gets_authorization(fake_registry_factory, store: DirStore) -> None:  # type: ignore[no-untyped-def]
    origin: FakeRegistry = fake_registry_factory()
    cdn: FakeRegistry = fake_registry_factory()
    img = make_image(origin, "app/redir", layer_sizes=(50_000, 60_000))
    for d, data in zip(img.layers, img.layer_data, strict=True):
        cdn.blobs[d] = data
    cdn.blobs[img.config] = origin.blobs[img.config]
    origin.basic_auth = ("user", "secret-pass")
    origin.redirect_blobs_to = f"http://localhost:{cdn.port}"  # another host name and port
    with fast_remote(credentials={origin.host: Credentials("user", "secret-pass")}) as remote:
        res = pull_image(store, f"{origin.host}/app/redir:latest", remote=remote)
    assert str(res.descriptor.digest) == img.digest
    blob_gets = origin.seen("GET", "/blobs/")
    assert blob_gets and all(r.headers.get("authorization", "").startswith("Basic ") for r in blob_gets)
    ext = cdn.seen("GET", "/external/")
    assert len(ext) == 3
    assert all("authorization" not in r.headers for r in ext)


def test_ambiguous_manifest_and_index_document_is_rejected(
    fake_registry: FakeRegistry, store: DirStore
) -> None:
    img = make_image(fake_registry, "app/amb")
    doc = json.loads(img.manifest)
    doc["manifests"] = [
        {
            "mediaType": mt.OCI_MANIFEST,
            "digest": img.digest,
            "size": len(img.manifest),
            "platform": {"os": "linux", "architecture": "amd64"},
        }
    ]
    for mtype in (mt.OCI_MANIFEST, mt.OCI_INDEX):
        body = dict(doc, mediaType=mtype)
        fake_registry.add_manifest("app/amb", "evil", json.dumps(body).encode(), mtype)
        with pytest.raises(ManifestError, match="both 'manifests' and manifest fields"):
            _pull(store, f"{fake_registry.host}/app/amb:evil")
    assert store.refs() == []


def test_schema1_is_refused_clearly(fake_registry: FakeRegistry, store: DirStore) -> None:
    raw = json.dumps({"schemaVersion": 1, "name": "old", "tag": "v1", "fsLayers": []}).encode()
    fake_registry.add_manifest("old/img", "v1", raw, mt.DOCKER_SCHEMA1_SIGNED)
    with pytest.raises(ManifestError, match="schema 1") as info:
        _pull(store, f"{fake_registry.host}/old/img:v1")
    assert info.value.hint and "re-push" in info.value.hint


def test_oversized_manifest_is_refused(fake_registry: FakeRegistry, store: DirStore) -> None:
    raw = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "pad": "x" * (4 << 20)}).encode()
    fake_registry.add_manifest("big/img", "v1", raw, mt.OCI_MANIFEST)
    with pytest.raises(ManifestError, match="limit"):
        _pull(store, f"{fake_registry.host}/big/img:v1")


def _index(reg: FakeRegistry, repo: str, images: dict[str, FakeImage]) -> str:
    manifests = []
    for plat, img in images.items():
        os_, arch, *variant = plat.split("/")
        p = {"os": os_, "architecture": arch, **({"variant": variant[0]} if variant else {})}
        manifests.append(
            {"mediaType": mt.OCI_MANIFEST, "digest": img.digest, "size": len(img.manifest), "platform": p}
        )
    manifests.append(
        {
            "mediaType": mt.OCI_MANIFEST,
            "digest": img.digest,
            "size": len(img.manifest),
            "platform": {"os": "unknown", "architecture": "unknown"},
        }
    )
    raw = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests}).encode()
    return reg.add_manifest(repo, "multi", raw, mt.OCI_INDEX)


def test_index_platform_pick_and_repo_digest(fake_registry: FakeRegistry, store: DirStore) -> None:
    amd = make_image(fake_registry, "app/multi", "amd", arch="amd64")
    arm = make_image(fake_registry, "app/multi", "arm", arch="arm64")
    idx = _index(fake_registry, "app/multi", {"linux/amd64": amd, "linux/arm64/v8": arm})
    res = _pull(store, f"{fake_registry.host}/app/multi:multi", platform="linux/arm64")
    assert str(res.descriptor.digest) == arm.digest
    assert str(res.repo_digest) == idx
    assert res.descriptor.annotations["io.pybuild.repo.digest"] == f"{fake_registry.host}/app/multi@{idx}"
    assert store.has(Digest.parse(idx))  # the index bytes are kept too
    assert [name for name, _ in store.refs()] == [f"{fake_registry.host}/app/multi:multi"]
    with pytest.raises(PlatformNotFound, match="linux/amd64, linux/arm64/v8"):
        _pull(store, f"{fake_registry.host}/app/multi:multi", platform="linux/s390x")
    # by digest: tagged name@digest
    res = _pull(store, f"{fake_registry.host}/app/multi@{idx}", platform="linux/amd64")
    assert res.name == f"{fake_registry.host}/app/multi@{idx}" and str(res.descriptor.digest) == amd.digest


def test_foreign_layer_urls_only_when_allowed(fake_registry_factory, store: DirStore) -> None:  # type: ignore[no-untyped-def]
    reg: FakeRegistry = fake_registry_factory()
    ext: FakeRegistry = fake_registry_factory()
    img = make_image(
        reg,
        "win/img",
        layer_sizes=(10_000,),
        put_layers=False,
        urls={0: [f"http://{ext.host}/external/PLACEHOLDER"]},
    )
    ext.blobs[img.layers[0]] = img.layer_data[0]
    raw = img.manifest.replace(b"PLACEHOLDER", img.layers[0].encode())
    reg.add_manifest("win/img", "latest", raw, mt.OCI_MANIFEST)
    with pytest.raises(RemoteError, match="foreign layer"):
        _pull(store, f"{reg.host}/win/img:latest")
    assert ext.seen("GET") == []
    res = _pull(store, f"{reg.host}/win/img:latest", allow_foreign=True)
    assert store.has(Digest.parse(img.layers[0])) and len(ext.seen("GET", "/external/")) == 1
    assert res.blobs_fetched == 1


def test_mirrors_in_order_then_origin(fake_registry_factory, store: DirStore) -> None:  # type: ignore[no-untyped-def]
    mirror: FakeRegistry = fake_registry_factory()
    img = make_image(mirror, "library/busybox")
    dead = "127.0.0.1:9"  # discard port: nothing listens
    cfg = RegistriesConfig.from_dict(
        {"registry": [{"location": "docker.io", "mirror": [{"location": dead}, {"location": mirror.host}]}]}
    )
    with fast_remote(cfg) as remote:
        res = pull_image(store, "busybox", remote=remote)
    assert res.name == "docker.io/library/busybox:latest" and str(res.descriptor.digest) == img.digest
    assert res.endpoint == f"{mirror.host}/library/busybox"
    assert store.resolve("docker.io/library/busybox:latest").digest == res.descriptor.digest


def _stored(store: DirStore, fake: FakeRegistry, repo: str, sizes: tuple[int, ...]) -> FakeImage:
    img = make_image(fake, repo, layer_sizes=sizes)
    _pull(store, f"{fake.host}/{repo}:latest")
    return img


@pytest.mark.parametrize("style", ["relative", "absolute"])
def test_upload_locations_relative_and_absolute(fake_registry_factory, store: DirStore, style: str) -> None:  # type: ignore[no-untyped-def]
    src: FakeRegistry = fake_registry_factory()
    dst: FakeRegistry = fake_registry_factory()
    img = _stored(store, src, "app/up", (250_000,))
    dst.location_style = style
    with fast_remote() as remote:
        res = push_image(store, f"{src.host}/app/up:latest", f"{dst.host}/copy/up:v1", remote=remote)
    assert str(res.digest) == img.digest
    assert dst.manifests[("copy/up", "v1")][0] == img.manifest
    puts = dst.seen("PUT", "/blobs/uploads/")
    assert len(puts) == 2 and all("_state=" in r.path and "digest=sha256" in r.path for r in puts)
    assert dst.blobs[img.layers[0]] == img.layer_data[0]


def test_chunked_upload_and_416_recovers_from_status_range(fake_registry_factory, store: DirStore) -> None:  # type: ignore[no-untyped-def]
    src: FakeRegistry = fake_registry_factory()
    dst: FakeRegistry = fake_registry_factory()
    img = _stored(store, src, "app/ch", (300_000,))
    dst.fail("PATCH", "/blobs/uploads/", 416, after=2)  # config, 1st layer chunk, then 416
    with fast_remote() as remote:
        push_image(
            store,
            f"{src.host}/app/ch:latest",
            f"{dst.host}/copy/ch:v1",
            remote=remote,
            chunk_size=100_000,
            jobs=1,
        )
    assert dst.blobs[img.layers[0]] == img.layer_data[0]
    order = [(r.method, r.path.split("?")[0].rsplit("/", 1)[-1][:6]) for r in dst.requests]
    patches = dst.seen("PATCH")
    assert [p.headers["content-range"] for p in patches if p.body_len > 1000] == [
        "0-99999",
        "100000-199999",
        "100000-199999",
        "200000-299999",
    ]
    status_gets = [r for r in dst.seen("GET", "/blobs/uploads/")]
    assert len(status_gets) == 1, order


def test_broken_patch_resumes_from_upload_status(fake_registry_factory, store: DirStore) -> None:  # type: ignore[no-untyped-def]
    src: FakeRegistry = fake_registry_factory()
    dst: FakeRegistry = fake_registry_factory()
    img = _stored(store, src, "app/br", (300_000,))
    dst.drop_patch_responses = 1  # stores the first chunk, then the connection dies
    with fast_remote() as remote:
        push_image(
            store,
            f"{src.host}/app/br:latest",
            f"{dst.host}/copy/br:v1",
            remote=remote,
            chunk_size=100_000,
            jobs=1,
        )
    assert dst.blobs[img.layers[0]] == img.layer_data[0]
    layer_patches = [p for p in dst.seen("PATCH") if p.body_len > 1000]
    assert sum(p.body_len for p in layer_patches) == 300_000  # nothing uploaded twice
    assert len(dst.seen("GET", "/blobs/uploads/")) == 1


def test_registry_asks_for_chunks_and_413_falls_back(fake_registry_factory, store: DirStore) -> None:  # type: ignore[no-untyped-def]
    src: FakeRegistry = fake_registry_factory()
    img = _stored(store, src, "app/ck", (400_000,))
    asks: FakeRegistry = fake_registry_factory()
    asks.chunk_min_length = 150_000
    with fast_remote() as remote:
        push_image(store, f"{src.host}/app/ck:latest", f"{asks.host}/c/k:1", remote=remote, chunk_size=50_000)
    sizes = [p.body_len for p in asks.seen("PATCH") if p.body_len > 1000]
    assert sizes == [150_000, 150_000, 100_000]
    small: FakeRegistry = fake_registry_factory()
    small.max_body = 120_000
    with fast_remote() as remote:
        push_image(store, f"{src.host}/app/ck:latest", f"{small.host}/c/k:1", remote=remote)
    assert small.blobs[img.layers[0]] == img.layer_data[0]
    assert any(r.method == "PUT" and r.body_len == 400_000 for r in small.requests)  # tried monolithic
    assert all(p.body_len <= 120_000 for p in small.seen("PATCH"))


def test_cross_repo_mount_and_existing_blobs(fake_registry: FakeRegistry, store: DirStore) -> None:
    img = _stored(store, fake_registry, "app/one", (100_000,))
    with fast_remote() as remote:
        r1 = push_image(
            store, f"{fake_registry.host}/app/one:latest", f"{fake_registry.host}/app/two:1", remote=remote
        )
    assert r1.mounted == 2 and r1.uploaded == 0
    posts = fake_registry.seen("POST", "mount=")
    assert posts and all("from=app%2Fone" in p.path or "from=app/one" in p.path for p in posts)
    assert fake_registry.seen("PATCH") == [] and fake_registry.seen("PUT", "/blobs/uploads/") == []
    with fast_remote() as remote:
        r2 = push_image(
            store, f"{fake_registry.host}/app/one:latest", f"{fake_registry.host}/app/two:2", remote=remote
        )
    assert r2.existed == 2 and str(r2.digest) == img.digest


def test_401_mid_upload_reauthenticates_once(fake_registry_factory, store: DirStore) -> None:  # type: ignore[no-untyped-def]
    src: FakeRegistry = fake_registry_factory()
    img = _stored(store, src, "app/tok", (300_000,))
    dst: FakeRegistry = fake_registry_factory()
    dst.bearer = True
    dst.expire_tokens_after_patches = 2  # the config's PATCH and the first layer chunk
    with fast_remote() as remote:
        push_image(
            store,
            f"{src.host}/app/tok:latest",
            f"{dst.host}/t/ok:1",
            remote=remote,
            chunk_size=100_000,
            jobs=1,
        )
    assert dst.blobs[img.layers[0]] == img.layer_data[0]
    token_gets = dst.seen("GET", "^/token")
    assert len(token_gets) == 2
    patches = [r for r in dst.requests if r.method == "PATCH" and r.body_len > 1000]
    assert [r.headers["content-range"] for r in patches] == [
        "0-99999",
        "100000-199999",
        "100000-199999",
        "200000-299999",
    ]  # the refused chunk re-sent once


def test_push_unknown_image_and_missing_destination(store: DirStore) -> None:
    with pytest.raises(ImageNotFound):
        push_image(store, "nothing:here", "127.0.0.1:1/x:y")


def test_blob_info_cache_file_is_bounded_json(fake_registry: FakeRegistry, store: DirStore) -> None:
    img = _stored(store, fake_registry, "app/cache", (1000,))
    data = json.loads((store.root / "remote" / "blob-locations.json").read_text())
    assert data[img.layers[0]] == [[fake_registry.host, "app/cache"]]
    assert hashlib.sha256(img.layer_data[0]).hexdigest() in img.layers[0]


@pytest.mark.parametrize("chunk", [None, 100_000])
def test_corrupt_store_blob_is_refused_before_its_last_byte(  # type: ignore[no-untyped-def]
    fake_registry_factory, store: DirStore, chunk: int | None
) -> None:
    """Push verifies what it reads from the store in the pass that sends it: a damaged blob
    fails as StoreCorrupt and its final block never leaves, so the registry holds nothing."""
    from registry.errors import StoreCorrupt

    src: FakeRegistry = fake_registry_factory()
    dst: FakeRegistry = fake_registry_factory()
    img = _stored(store, src, "app/bad", (300_000,))
    path = store.blob_path(Digest.parse(img.layers[0]))
    data = bytearray(path.read_bytes())
    data[150_000] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    with fast_remote() as remote, pytest.raises(StoreCorrupt, match=img.layers[0]):
        push_image(store, f"{src.host}/app/bad:latest", f"{dst.host}/copy/bad:1", remote=remote,
                   chunk_size=chunk, jobs=1)
    assert img.layers[0] not in dst.blobs
    sent = sum(r.body_len for r in dst.requests if r.method in ("PUT", "PATCH") and r.body_len > 1000)
    assert sent < 300_000
    assert ("copy/bad", "1") not in dst.manifests
