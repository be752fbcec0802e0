"""Offline base images for tests, built through pybuild's own registry API.

``busybox``: Debian's busybox-static binary plus its applet symlinks, passwd/group/shadow,
/tmp (1777) and /root (0700), one deterministic gzip layer with every mtime at BUSYBOX_EPOCH,
so the digest is fixed for a given busybox-static package (recipe: tests/support/rootfs.py).
Session fixtures build it once; ``busybox_in_registry`` pushes it to the test registry with
skopeo (an independent client); ``busybox_rootfs_tar`` is the same rootfs as a plain tar (the
input of `pybuild import`). ``tiny_image`` makes small distinct images fast.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.imagebuild import host_arch, rfc3339, single_layer_config, store_image
from registry.layertar import TarEntry, write_layer
from registry.model import ContainerConfig, Descriptor, History, ImageConfig
from registry.store import DirStore

# The rootfs recipe lives in tests/support/rootfs.py (shared with scripts/mk-busybox-rootfs.py);
# its names are re-exported here for the fixtures' users.
from tests.support.rootfs import (
    BUSYBOX_BIN,
    BUSYBOX_EPOCH,
    BUSYBOX_REF,
    GROUP,
    PASSWD,
    PATH_ENV,
    SHADOW,
    busybox_entries,
    have_busybox,
)

__all__ = ["BUSYBOX_BIN", "BUSYBOX_EPOCH", "BUSYBOX_REF", "GROUP", "PASSWD", "PATH_ENV", "SHADOW",
           "StoredImage", "build_busybox", "busybox_entries", "have_busybox", "tiny_image"]


def build_busybox(store: DirStore, *, tags: tuple[str, ...] = (BUSYBOX_REF,),
                  codec: str = "gzip") -> Descriptor:
    """Store the busybox image (deterministic) and tag it; returns the manifest descriptor."""
    layer = write_layer(busybox_entries(), store, codec)  # type: ignore[arg-type]
    created = rfc3339(BUSYBOX_EPOCH)
    config = single_layer_config(
        layer, created=created, created_by="busybox-static rootfs (pybuild test image)",
        container=ContainerConfig(env=(PATH_ENV,), cmd=("sh",),
                                  labels={"org.opencontainers.image.title": "busybox"}))
    return store_image(store, config, [layer], tags=tags)


def tiny_image(store: DirStore, *tags: str, content: bytes = b"hello\n", created: int = BUSYBOX_EPOCH,
               layers: int = 1, labels: dict[str, str] | None = None) -> Descriptor:
    """A small image (``layers`` one-file layers plus an empty-layer history entry), tagged with
    ``tags`` (full references) or stored untagged. Different ``content`` gives a different ID."""
    blobs = [write_layer([TarEntry(f"file{i}", "file", size=len(content), data=content, mtime=created)],
                         store, "gzip") for i in range(layers)]
    when = rfc3339(created)
    history = [History(created=when, created_by=f"/bin/sh -c echo {i} > /file{i}") for i in range(layers)]
    history.append(History(created=when, created_by='/bin/sh -c #(nop)  CMD ["sh"]', empty_layer=True))
    config = ImageConfig(architecture=host_arch(), os="linux",
                         config=ContainerConfig(cmd=("sh",), labels=labels or {}),
                         diff_ids=tuple(b.diff_id for b in blobs), history=tuple(history), created=when)
    return store_image(store, config, blobs, tags=tags)


@dataclass(frozen=True)
class StoredImage:
    store: DirStore
    ref: str
    desc: Descriptor


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> StoredImage:
    """A session-wide store holding busybox (read-only for tests: copy it before changing)."""
    if not have_busybox():
        from tests.conftest import skip_or_fail

        skip_or_fail("busybox-static not installed (apt-get install busybox-static)")
    store = DirStore(tmp_path_factory.mktemp("busybox-store"))
    return StoredImage(store, BUSYBOX_REF, build_busybox(store))


@pytest.fixture
def busybox_store(tmp_path: Path, busybox_image: StoredImage) -> Iterator[StoredImage]:
    """A per-test writable copy of the busybox store."""
    root = tmp_path / "store"
    shutil.copytree(busybox_image.store.root, root, symlinks=True)
    yield StoredImage(DirStore(root), busybox_image.ref, busybox_image.desc)


@pytest.fixture(scope="session")
def busybox_in_registry(registry_url: str, busybox_image: StoredImage) -> str:
    """busybox pushed to the session's plain-HTTP registry as <registry>/library/busybox:latest."""
    if shutil.which("skopeo") is None:
        from tests.conftest import skip_or_fail

        skip_or_fail("skopeo not installed (apt-get install skopeo)")
    dest = f"{registry_url}/library/busybox:latest"
    subprocess.run(["skopeo", "copy", "-q", "--preserve-digests", "--dest-tls-verify=false",
                    f"oci:{busybox_image.store.root}:{busybox_image.ref}", f"docker://{dest}"],
                   check=True, capture_output=True, timeout=120)
    return dest


@pytest.fixture(scope="session")
def busybox_rootfs_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox rootfs as a plain tar file (the input of `pybuild import`)."""
    if not have_busybox():
        from tests.conftest import skip_or_fail

        skip_or_fail("busybox-static not installed (apt-get install busybox-static)")
    from tests.support.rootfs import write_rootfs_tar

    path = tmp_path_factory.mktemp("rootfs") / "busybox-rootfs.tar"
    with path.open("wb") as f:
        write_rootfs_tar(f)
    return path
