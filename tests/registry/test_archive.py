"""save/load (docker-archive, oci-archive) and import: digests kept where the format allows,
verified blobs, hostile archives refused, deterministic imports, crash and concurrency safety."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from registry.archive import SaveItem, import_rootfs, load, save, save_to_path
from registry.compression import compressor
from registry.digest import Digest
from registry.errors import ArchiveError, DigestMismatch, InvalidChange
from registry.image import StoreImage, resolve_image
from registry.model import ImageConfig, Platform
from registry.store import DirStore
from tests.support.images import tiny_image

REPO_ROOT = Path(__file__).resolve().parents[2]


def _save_bytes(store: DirStore, names: list[str], fmt: str) -> bytes:
    items = [SaveItem(resolve_image(store, n), (str(resolve_image(store, n).names[0]),)) for n in names]
    buf = io.BytesIO()
    save(store, items, buf, fmt=fmt)  # type: ignore[arg-type]
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_round_trip_keeps_manifest_digest_and_names(store: DirStore, tmp_path: Path, fmt: str) -> None:
    a = tiny_image(store, "docker.io/library/a:1", content=b"a", layers=2)
    b = tiny_image(store, "localhost:5000/b:2", content=b"b")
    raw = _save_bytes(store, ["a:1", "localhost:5000/b:2"], fmt)
    assert raw == _save_bytes(store, ["a:1", "localhost:5000/b:2"], fmt)   # deterministic
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        names = tf.getnames()
    assert "oci-layout" in names and "index.json" in names
    assert ("manifest.json" in names) == (fmt == "docker-archive")
    other = DirStore(tmp_path / "other")
    loaded = load(other, io.BytesIO(raw))
    assert [(x.name, x.descriptor.digest) for x in loaded] == [
        ("docker.io/library/a:1", a.digest), ("localhost:5000/b:2", b.digest)]
    assert set(other.walk()) == set(StoreImage(store, a).blobs()) | set(StoreImage(store, b).blobs())
    # Loading again is idempotent.
    assert [x.descriptor for x in load(other, io.BytesIO(raw))] == [x.descriptor for x in loaded]


def test_docker_archive_manifest_json_shape(store: DirStore) -> None:
    a = tiny_image(store, "docker.io/library/a:1", content=b"a")
    img = StoreImage(store, a)
    raw = _save_bytes(store, ["a:1"], "docker-archive")
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        (entry,) = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert entry["Config"] == f"blobs/sha256/{img.id.hex}"
        assert entry["RepoTags"] == ["docker.io/library/a:1"]
        assert entry["Layers"] == [f"blobs/sha256/{d.digest.hex}" for d in img.manifest.layers]
        index = json.loads(tf.extractfile("index.json").read())  # type: ignore[union-attr]
        assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == "docker.io/library/a:1"
        assert all(m.mtime == 0 and m.uid == 0 for m in tf.getmembers())


def test_saved_by_id_loads_untagged(store: DirStore, tmp_path: Path) -> None:
    a = tiny_image(store, "docker.io/library/a:1", content=b"a")
    buf = io.BytesIO()
    save(store, [SaveItem(StoreImage(store, a))], buf)
    (item,) = load(DirStore(tmp_path / "o"), io.BytesIO(buf.getvalue()))
    assert item.name is None and item.image_id == StoreImage(store, a).id


@pytest.mark.parametrize("wrap", ["gzip", "xz", "zstd"])
def test_compressed_archives_load(store: DirStore, tmp_path: Path, wrap: str) -> None:
    a = tiny_image(store, "docker.io/library/a:1", content=b"a")
    raw = _save_bytes(store, ["a:1"], "oci-archive")
    if wrap == "gzip":
        data = gzip.compress(raw)
    elif wrap == "xz":
        data = lzma.compress(raw)
    else:
        out = io.BytesIO()
        w = compressor(out, "zstd")
        w.write(raw)
        w.close()
        data = out.getvalue()
    (item,) = load(DirStore(tmp_path / "o"), io.BytesIO(data))
    assert item.descriptor.digest == a.digest


def _tar(members: list[tuple[str, bytes | None, str | None]]) -> bytes:
    """(name, data, symlink target) -> tar bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = link
                tf.addfile(info)
            else:
                assert data is not None
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _classic_archive(config_extra: dict | None = None) -> tuple[bytes, bytes, bytes]:
    """A docker < 25 / podman style archive: <hex>.tar layers, <hex>.json config, symlinks."""
    layer = _tar([("hello", b"hi\n", None)])
    diff = Digest.of(layer)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [str(diff)]},
                         **(config_extra or {})}).encode()
    cid = Digest.of(config).hex
    manifest = json.dumps([{"Config": f"{cid}.json", "RepoTags": ["old/app:1"],
                            "Layers": ["abc/layer.tar"]}]).encode()
    archive = _tar([(f"{diff.hex}.tar", layer, None), ("abc/layer.tar", None, f"../{diff.hex}.tar"),
                    ("abc/VERSION", b"1.0", None), (f"{cid}.json", config, None),
                    ("manifest.json", manifest, None)])
    return archive, config, layer


def test_classic_docker_archive_keeps_image_id(store: DirStore) -> None:
    archive, config, layer = _classic_archive()
    (item,) = load(store, io.BytesIO(archive))
    assert item.name == "docker.io/old/app:1"
    assert item.image_id == Digest.of(config)
    img = resolve_image(store, "old/app:1")
    assert img.id == Digest.of(config) and img.raw_config() == config
    assert img.manifest.layers[0].media_type.endswith("tar+gzip")
    with img.layers()[0].open_uncompressed() as f:
        assert f.read() == layer
    # deterministic: the same archive loads to the same manifest digest
    again = load(DirStore(store.root.parent / "again"), io.BytesIO(archive))
    assert again[0].descriptor.digest == item.descriptor.digest


def test_classic_archive_with_wrong_diff_id_is_refused(store: DirStore) -> None:
    archive, _, _ = _classic_archive({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}})
    with pytest.raises(ArchiveError, match="diff_ids"):
        load(store, io.BytesIO(archive))
    assert store.entries() == []


@pytest.mark.parametrize("name", ["../evil", "/abs/evil", "blobs/../../x"])
def test_hostile_member_names_are_refused(store: DirStore, name: str) -> None:
    with pytest.raises(ArchiveError, match="unsafe member name"):
        load(store, io.BytesIO(_tar([(name, b"x", None), ("manifest.json", b"[]", None)])))
    assert store.entries() == []


def test_symlink_escaping_the_archive_is_refused(store: DirStore) -> None:
    with pytest.raises(ArchiveError, match="unsafe"):
        load(store, io.BytesIO(_tar([("a/layer.tar", None, "../../etc/passwd")])))


def test_blob_with_wrong_content_is_refused(store: DirStore, tmp_path: Path) -> None:
    a = tiny_image(store, "docker.io/library/a:1", content=b"a")
    raw = _save_bytes(store, ["a:1"], "oci-archive")
    layer = StoreImage(store, a).manifest.layers[0]
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        members = [(m.name, tf.extractfile(m).read() if m.isfile() else None, None)  # type: ignore[union-attr]
                   for m in tf.getmembers() if m.isfile()]
    evil = [(n, bytes(len(d)) if n.endswith(layer.digest.hex) else d, None) for n, d, _ in members]
    other = DirStore(tmp_path / "o")
    with pytest.raises(DigestMismatch):
        load(other, io.BytesIO(_tar(evil)))
    assert other.entries() == [] and not other.has(layer.digest)
    missing = [(n, d, None) for n, d, _ in members if not n.endswith(layer.digest.hex)]
    with pytest.raises(ArchiveError, match="lacks blob"):
        load(other, io.BytesIO(_tar(missing)))
    assert other.entries() == []


def test_not_an_archive(store: DirStore) -> None:
    with pytest.raises(ArchiveError):
        load(store, io.BytesIO(b"hello world" * 100))
    with pytest.raises(ArchiveError, match="no manifest.json or index.json"):
        load(store, io.BytesIO(_tar([("x", b"y", None)])))
    raw_trunc = _classic_archive()[0][:700]
    with pytest.raises(ArchiveError):
        load(store, io.BytesIO(raw_trunc))
    assert store.entries() == []


def test_save_to_path_is_atomic(store: DirStore, tmp_path: Path) -> None:
    a = tiny_image(store, "docker.io/library/a:1", content=b"a")
    out = tmp_path / "out.tar"
    save_to_path(store, [SaveItem(StoreImage(store, a), ("docker.io/library/a:1",))], out)
    with tarfile.open(out) as tf:
        assert "index.json" in tf.getnames()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- import --------------------------------------------------------------------------------------
def test_import_is_deterministic_with_source_date_epoch(tmp_path: Path, busybox_rootfs_tar: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    results = []
    for name in ("one", "two"):
        with busybox_rootfs_tar.open("rb") as f:
            results.append(import_rootfs(DirStore(tmp_path / name), f, tags=["busybox"]))
    assert results[0].descriptor.digest == results[1].descriptor.digest
    assert results[0].layer.diff_id == Digest.of(busybox_rootfs_tar.read_bytes())   # bytes kept
    cfg = ImageConfig.from_json(DirStore(tmp_path / "one").read(results[0].image_id))
    assert cfg.created == "2023-11-14T22:13:20Z" and cfg.history[0].comment == "Imported from -"
    # A gzip-compressed input gives the same layer (the tar bytes are what count).
    with io.BytesIO(gzip.compress(busybox_rootfs_tar.read_bytes())) as f:
        again = import_rootfs(DirStore(tmp_path / "three"), f, tags=["busybox"])
    assert again.descriptor.digest == results[0].descriptor.digest


def test_import_changes_message_platform(store: DirStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    rootfs = _tar([("bin/sh", b"#!", None)])
    result = import_rootfs(store, io.BytesIO(rootfs), tags=["me/app:1"], message="from CI",
                           platform=Platform("linux", "arm64", "v8"),
                           changes=['CMD ["sh", "-c", "echo hi"]', "ENV A=1 B=\"two words\"",
                                    "WORKDIR /srv", "USER 1000:1000", "EXPOSE 80 53/udp",
                                    "LABEL org.example=yes", "ENTRYPOINT /init"])
    img = resolve_image(store, "me/app:1", platform=Platform("linux", "arm64"))
    cfg = img.config
    assert img.id == result.image_id and result.members == 1
    assert cfg.architecture == "arm64" and cfg.variant == "v8"
    assert cfg.config.cmd == ("sh", "-c", "echo hi")
    assert cfg.config.entrypoint == ("/bin/sh", "-c", "/init")
    assert cfg.config.env == ("A=1", "B=two words")
    assert cfg.config.working_dir == "/srv" and cfg.config.user == "1000:1000"
    assert cfg.config.exposed_ports == ("53/udp", "80/tcp")
    assert cfg.config.labels == {"org.example": "yes"}
    assert cfg.history[0].comment == "from CI" and cfg.created == "1970-01-01T00:00:00Z"


def test_import_refuses_bad_input(store: DirStore) -> None:
    with pytest.raises(ArchiveError, match="empty input"):
        import_rootfs(store, io.BytesIO(b""))
    with pytest.raises(ArchiveError, match="not a tar"):
        import_rootfs(store, io.BytesIO(b"definitely not a tar file" * 40))
    with pytest.raises(InvalidChange, match="RUN is not supported"):
        import_rootfs(store, io.BytesIO(_tar([("x", b"", None)])), changes=["RUN rm -rf /"])
    assert store.entries() == [] and list(store.walk()) == []


# -- processes -------------------------------------------------------------------------------------
LOADER = textwrap.dedent("""
    import sys
    from registry.archive import load
    from registry.store import DirStore
    with open(sys.argv[2], "rb") as f:
        load(DirStore(sys.argv[1]), f)
""")


def test_concurrent_loads(store: DirStore, tmp_path: Path) -> None:
    src = DirStore(tmp_path / "src")
    for i in range(3):
        tiny_image(src, f"docker.io/library/x:{i}", content=str(i).encode(), layers=3)
    archive = tmp_path / "a.tar"
    save_to_path(src, [SaveItem(resolve_image(src, f"x:{i}"), (f"docker.io/library/x:{i}",))
                       for i in range(3)], archive)
    procs = [subprocess.Popen([sys.executable, "-c", LOADER, str(store.root), str(archive)], cwd=REPO_ROOT)
             for _ in range(3)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    assert sorted(n for n, _ in store.refs()) == [f"docker.io/library/x:{i}" for i in range(3)]
    assert set(store.walk()) == set(src.walk())


FEEDER = textwrap.dedent("""
    import sys
    from registry.archive import load
    from registry.store import DirStore
    load(DirStore(sys.argv[1]), sys.stdin.buffer)
""")


def test_kill_mid_load_leaves_store_consistent(store: DirStore, tmp_path: Path) -> None:
    src = DirStore(tmp_path / "src")
    big = os.urandom(3 << 20)
    tiny_image(src, "docker.io/library/big:1", content=big)
    buf = io.BytesIO()
    save(src, [SaveItem(resolve_image(src, "big:1"), ("docker.io/library/big:1",))], buf, fmt="oci-archive")
    raw = buf.getvalue()
    with subprocess.Popen([sys.executable, "-c", FEEDER, str(store.root)], cwd=REPO_ROOT,
                          stdin=subprocess.PIPE) as proc:
        assert proc.stdin is not None
        proc.stdin.write(raw[: len(raw) // 2])
        proc.stdin.flush()
        import time
        deadline = time.monotonic() + 10
        while not any(p.name.startswith("t-") for p in store.ingest_dir.iterdir()):
            assert time.monotonic() < deadline, "the loader never started ingesting"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    assert store.entries() == []
    for digest in store.walk():          # whatever is in blobs/ is complete and verified
        with store.open(digest) as f:
            f.verify_rest()
