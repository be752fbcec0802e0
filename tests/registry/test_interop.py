"""Interop with the peers, as the oracle: skopeo and umoci read the store; podman loads what
`pybuild save` writes and `pybuild load` loads what podman saves, keeping the image digest
where the format allows (config digest always; manifest digest with oci-archive and with our
own docker-archive)."""

from __future__ import annotations

import json
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from registry.image import resolve_image
from registry.store import DirStore
from tests.support.stores import run_cli

REF = "docker.io/library/busybox:latest"


@pytest.fixture
def imported(tmp_path: Path, busybox_rootfs_tar: Path, monkeypatch: pytest.MonkeyPatch) -> DirStore:
    """A store holding busybox made by `pybuild import` (CLI, in-process)."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    root = tmp_path / "store"
    r = run_cli(["import", "-c", 'CMD ["sh"]', str(busybox_rootfs_tar), "busybox"], root=root)
    assert r.code == 0, r.stderr
    return DirStore(root)


def _run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, f"{' '.join(argv)} failed: {proc.stderr}"
    return proc.stdout


@pytest.mark.needs_peer("skopeo")
@pytest.mark.needs_registry
def test_skopeo_reads_and_copies_an_imported_image(imported: DirStore, registry_url: str) -> None:
    img = resolve_image(imported, "busybox")
    info = json.loads(_run(["skopeo", "inspect", f"oci:{imported.root}:{REF}"]))
    assert info["Digest"] == str(img.digest)
    assert info["Layers"] == [str(d.digest) for d in img.manifest.layers]
    config = json.loads(_run(["skopeo", "inspect", "--config", f"oci:{imported.root}:{REF}"]))
    assert config["config"]["Cmd"] == ["sh"]
    dest = f"docker://{registry_url}/interop/busybox:imported"
    # --preserve-digests: skopeo may otherwise swap in a blob variant it saw before (its blob-info
    # cache), which would change the manifest.
    _run(["skopeo", "copy", "-q", "--preserve-digests", "--dest-tls-verify=false",
          f"oci:{imported.root}:{REF}", dest])
    remote = json.loads(_run(["skopeo", "inspect", "--tls-verify=false", dest]))
    assert remote["Digest"] == str(img.digest)


@pytest.mark.needs_peer("umoci")
def test_umoci_reads_the_store(imported: DirStore, tmp_path: Path) -> None:
    out = _run(["umoci", "stat", "--image", f"{imported.root}:{REF}"])
    assert "Imported from -" in out
    bundle = tmp_path / "bundle"
    _run(["umoci", "unpack", "--rootless", "--image", f"{imported.root}:{REF}", str(bundle)])
    assert (bundle / "rootfs" / "bin" / "busybox").is_file()
    assert (bundle / "rootfs" / "bin" / "sh").is_symlink()


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """podman with its own storage under tmp_path: the host's storage is never touched.
    (podman wants a runroot path under 50 characters, hence the short temp dir.)"""
    base = tmp_path / "podman"
    with tempfile.TemporaryDirectory(prefix="pbpod-", dir="/tmp") as runroot:

        def run(*args: str) -> str:
            return _run(["podman", "--root", str(base / "root"), "--runroot", runroot,
                         "--storage-driver", "vfs", "--events-backend", "none", *args])

        yield run


@pytest.mark.needs_peer("podman")
@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_podman_loads_pybuild_save(imported: DirStore, tmp_path: Path, podman, fmt: str) -> None:
    img = resolve_image(imported, "busybox")
    archive = tmp_path / f"{fmt}.tar"
    assert run_cli(["save", "--format", fmt, "-o", str(archive), "busybox"], root=imported.root).code == 0
    out = podman("load", "-i", str(archive))
    assert f"Loaded image: {REF}" in out
    (info,) = json.loads(podman("image", "inspect", REF))
    assert info["Id"] == img.id.hex                        # the image ID (config digest) is kept
    if fmt == "oci-archive":                               # and with OCI the manifest digest too
        assert info["Digest"] == str(img.digest)
        assert f"docker.io/library/busybox@{img.digest}" in info["RepoDigests"]


@pytest.mark.needs_peer("podman")
@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_pybuild_loads_podman_save(imported: DirStore, tmp_path: Path, podman, fmt: str) -> None:
    ours = resolve_image(imported, "busybox")
    first = tmp_path / "first.tar"
    r = run_cli(["save", "--format", "oci-archive", "-o", str(first), "busybox"], root=imported.root)
    assert r.code == 0
    podman("load", "-i", str(first))
    podman("tag", REF, "localhost/peer/busybox:from-podman")
    archive = tmp_path / "podman.tar"
    podman("save", "--format", fmt, "-o", str(archive), "localhost/peer/busybox:from-podman")
    (info,) = json.loads(podman("image", "inspect", "localhost/peer/busybox:from-podman"))
    root = tmp_path / "loaded"
    r = run_cli(["load", "-i", str(archive)], root=root)
    assert r.code == 0, r.stderr
    assert r.stdout == "Loaded image: localhost/peer/busybox:from-podman\n"
    loaded = resolve_image(DirStore(root), "localhost/peer/busybox:from-podman")
    with tarfile.open(archive) as tf:
        if fmt == "docker-archive":
            (entry,) = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
            assert loaded.id.hex == entry["Config"].removesuffix(".json") == info["Id"] == ours.id.hex
        else:
            index = json.loads(tf.extractfile("index.json").read())  # type: ignore[union-attr]
            assert str(loaded.digest) == index["manifests"][0]["digest"]   # the archive's digest kept
    # what we loaded is whole: every layer decompresses to its diff_id
    import hashlib

    for layer in loaded.layers():
        h = hashlib.sha256()
        with layer.open_uncompressed() as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        assert f"sha256:{h.hexdigest()}" == str(layer.diff_id)
