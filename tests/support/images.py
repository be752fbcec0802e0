"""Offline base images for tests, built through pybuild's own registry API.

``busybox``: Debian's busybox-static binary plus its applet symlinks, passwd/group/shadow,
/tmp (1777) and /root (0700), one deterministic gzip layer with every mtime at BUSYBOX_EPOCH,
so the digest is fixed for a given busybox-static package. Session fixtures build it once;
``busybox_in_registry`` pushes it to the test registry with skopeo (an independent client).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.imagebuild import rfc3339, single_layer_config, store_image
from registry.layertar import TarEntry, write_layer
from registry.model import ContainerConfig, Descriptor
from registry.store import DirStore

BUSYBOX_BIN = Path("/bin/busybox")
BUSYBOX_EPOCH = 1700000000
BUSYBOX_REF = "docker.io/library/busybox:latest"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PASSWD = b"""root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""
GROUP = b"""root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
wheel:x:10:root
www-data:x:33:
nogroup:x:65534:
"""
SHADOW = b"root:*::0:::::\nnobody:*::0:::::\n"


def have_busybox() -> bool:
    return BUSYBOX_BIN.is_file()


def busybox_entries(epoch: int = BUSYBOX_EPOCH) -> list[TarEntry]:
    """The busybox rootfs as layer entries (no files on disk needed)."""
    applets = subprocess.run([str(BUSYBOX_BIN), "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    dirs = {"bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
            "etc": 0o755, "root": 0o700, "tmp": 0o1777, "home": 0o755, "var": 0o755,
            "var/spool": 0o755, "var/spool/mail": 0o755, "var/www": 0o755, "proc": 0o755,
            "sys": 0o755, "dev": 0o755}
    entries = [TarEntry(d, "dir", mode=m, mtime=epoch) for d, m in dirs.items()]
    size = BUSYBOX_BIN.stat().st_size
    entries.append(TarEntry("bin/busybox", "file", mode=0o755, size=size, source=BUSYBOX_BIN,
                            mtime=epoch))
    for applet in applets:
        if applet == "bin/busybox":
            continue
        entries.append(TarEntry(applet, "symlink", mode=0o777, linkname="/bin/busybox", mtime=epoch))
    for name, data, mode in (("etc/passwd", PASSWD, 0o644), ("etc/group", GROUP, 0o644),
                             ("etc/shadow", SHADOW, 0o640)):
        entries.append(TarEntry(name, "file", mode=mode, size=len(data), data=data, mtime=epoch))
    return entries


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
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                    f"oci:{busybox_image.store.root}:{busybox_image.ref}", f"docker://{dest}"],
                   check=True, capture_output=True, timeout=120)
    return dest
