"""Rootless unpack keeps owners: an unprivileged user (made here with useradd and its own
/etc/subuid + /etc/subgid range) runs an image whose layers hold files of 33:33, a setgid
directory, a setuid file, a user xattr, a whiteout and an opaque directory; `pybuild run`
shows the layer's owners and mode bits, because runtime.rootfs unpacks inside the user
namespace (host files get the subordinate ids). A second user without a range gets today's
behaviour (owners dropped to the container's root) plus one warning per such layer.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.imagebuild import host_arch, store_image
from registry.layertar import LayerBlob, TarEntry, opaque, whiteout, write_layer
from registry.model import ContainerConfig, History, ImageConfig, Manifest, chain_ids
from registry.store import DirStore
from tests.support.images import PATH_ENV, busybox_entries
from tests.support.rootless import RootlessUser, import_prelude, pybuild_as, python_as, rootless_user

SUBID_START = 520000
Users = tuple[RootlessUser, RootlessUser]      # (with a subordinate id range, without one)
REF = "docker.io/library/owners:1"

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_userns, pytest.mark.slow]

PROBE = ("stat -c '%u:%g %a %n' /srv/www /srv/www/index.html /srv/www/tool /var/mail /data/new.txt; "
         "echo data=$(ls -A /data); echo srv=$(ls -A /srv)")
EXPECTED_KEPT = ["33:33 2775 /srv/www", "33:33 640 /srv/www/index.html", "33:33 4755 /srv/www/tool",
                 "0:8 2775 /var/mail", "1000:1000 644 /data/new.txt", "data=new.txt", "srv=www"]


def _layers(store: DirStore) -> list[LayerBlob]:
    """busybox + a layer of other owners and special bits (gzip) + one with a whiteout and an
    opaque directory (zstd: the unpack child must find the zstandard module too)."""
    t = 1700000000
    second = write_layer([
        TarEntry("data", "dir", mode=0o755, mtime=t),
        TarEntry("data/old.txt", "file", data=b"old\n", size=4, mtime=t),
        TarEntry("srv", "dir", mode=0o755, mtime=t),
        TarEntry("srv/gone.txt", "file", data=b"gone\n", size=5, mtime=t),
        TarEntry("srv/www", "dir", mode=0o2775, uid=33, gid=33, mtime=t),
        TarEntry("srv/www/index.html", "file", mode=0o640, uid=33, gid=33, data=b"<p>hi</p>\n",
                 size=10, mtime=t, xattrs={"user.pybuild.test": b"kept"}),
        TarEntry("srv/www/tool", "file", mode=0o4755, uid=33, gid=33, data=b"#!/bin/sh\n", size=10,
                 mtime=t),
        TarEntry("var", "dir", mode=0o755, mtime=t),
        TarEntry("var/mail", "dir", mode=0o2775, uid=0, gid=8, mtime=t),
    ], store, "gzip")
    third = write_layer([
        TarEntry("data", "dir", mode=0o755, mtime=t),
        opaque("data", mtime=t),
        TarEntry("data/new.txt", "file", uid=1000, gid=1000, data=b"new\n", size=4, mtime=t),
        whiteout("srv/gone.txt", mtime=t),
    ], store, "zstd")
    return [write_layer(busybox_entries(), store, "gzip"), second, third]


def _config(layers: list[LayerBlob], diff_ids: tuple[object, ...] | None = None) -> ImageConfig:
    return ImageConfig(host_arch(), "linux", ContainerConfig(env=(PATH_ENV,), cmd=("sh",)),
                       tuple(diff_ids or (lay.diff_id for lay in layers)),  # type: ignore[arg-type]
                       tuple(History(created_by=f"layer {i}") for i in range(len(layers))))


def _bad_images(store: DirStore, layers: list[LayerBlob]) -> None:
    """bad-diffid:1 (the config lies about the last layer) and corrupt:1 (a tar layer whose
    stored blob has one byte flipped inside a file's data: the tar stays readable)."""
    from registry import mediatypes as mt

    lying = _config(layers, (*(lay.diff_id for lay in layers[:-1]), layers[1].diff_id))
    config_desc = store.put(lying.to_json(), mt.OCI_CONFIG)
    manifest = Manifest(mt.OCI_MANIFEST, config_desc, tuple(lay.descriptor for lay in layers))
    store.tag("docker.io/library/bad-diffid:1", store.put(manifest.to_json(), mt.OCI_MANIFEST))
    payload = b"p" * 8192
    plain = write_layer([TarEntry("payload", "file", uid=33, gid=33, data=payload, size=len(payload)),
                         TarEntry("www", "dir", uid=33, gid=33, mode=0o750)], store, "none")
    store_image(store, _config([layers[0], plain]), [layers[0], plain], tags=["docker.io/library/corrupt:1"])
    blob = store.blobs_dir / plain.descriptor.digest.hex
    data = bytearray(blob.read_bytes())
    at = data.index(payload)
    data[at + 100] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))


def _populate(store: DirStore, work: Path) -> None:
    """The owners image (REF) and the two broken ones, in the user's store."""
    del work
    layers = _layers(store)
    store_image(store, _config(layers), layers, tags=[REF])
    _bad_images(store, layers)


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Users]:
    """One user with its own /etc/subuid + /etc/subgid range, one without any."""
    with contextlib.ExitStack() as stack:
        ranged = stack.enter_context(rootless_user(tmp_path_factory, "pbun", subid_start=SUBID_START,
                                                   populate=_populate))
        single = stack.enter_context(rootless_user(tmp_path_factory, "pbsg", subid_start=None,
                                                   populate=_populate))
        yield ranged, single


def _snapshot_fs(user: RootlessUser, layer_index: int) -> Path:
    from registry.image import resolve_image
    from runtime.snapshots import OverlaySnapshotter

    store = DirStore(user.store)
    image = resolve_image(store, REF)
    key = str(chain_ids(image.config.diff_ids)[layer_index])
    return OverlaySnapshotter(user.store / "snapshots").path(key)


def test_rootless_run_shows_the_layer_owners_and_modes(users: Users) -> None:
    user, _ = users
    r = pybuild_as(user, "run", "--rm", "--network", "none", REF, "sh", "-c", PROBE)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == EXPECTED_KEPT
    assert "could not be kept" not in r.stderr
    # on the host: the subordinate ids of the user's map (container id N -> start + N - 1),
    # the xattr, and overlay's own whiteout/opaque forms in the upper layers
    second, third = _snapshot_fs(user, 1), _snapshot_fs(user, 2)
    index = (second / "srv" / "www" / "index.html").stat()
    assert (index.st_uid, index.st_gid) == (SUBID_START + 32, SUBID_START + 32)
    assert os.getxattr(second / "srv" / "www" / "index.html", "user.pybuild.test") == b"kept"
    assert (second / "srv").stat().st_uid == user.uid            # container root = the user
    assert (second / "var" / "mail").stat().st_gid == SUBID_START + 7
    gone = third / "srv" / "gone.txt"
    st = gone.lstat()
    assert (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0) or \
        os.getxattr(gone, "user.overlay.whiteout", follow_symlinks=False) is not None
    assert os.getxattr(third / "data", "user.overlay.opaque") == b"y"
    assert not (third / "data" / "old.txt").exists()
    new = (third / "data" / "new.txt").stat()
    assert (new.st_uid, new.st_gid) == (SUBID_START + 999, SUBID_START + 999)
    # a second run reuses the snapshots (nothing to unpack, so no child, same answer)
    again = pybuild_as(user, "run", "--rm", "--network", "none", REF, "sh", "-c", PROBE)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == EXPECTED_KEPT


def test_rootless_unpack_failures_keep_their_type_and_clean_up(users: Users) -> None:
    """A wrong diff_id (LayerError) and a corrupted blob (DigestMismatch) from the unpack child
    reach the caller as the same classes; the partial snapshots, full of subordinate-id files
    the user cannot remove from the host side, are gone."""
    user, _ = users
    code = import_prelude() + f"""
from registry.image import resolve_image
from registry.store import DirStore
from runtime.rootfs import ensure_chain_report
from runtime.snapshots import OverlaySnapshotter
store = DirStore({str(user.store)!r})
sn = OverlaySnapshotter(store.root / "snapshots")
for ref in ("bad-diffid:1", "corrupt:1"):
    image = resolve_image(store, ref)
    try:
        ensure_chain_report(store, sn, image.manifest, config=image.config)
        print(ref, "unpacked")
    except Exception as exc:
        print(ref, type(exc).__name__, getattr(exc, "why", getattr(exc, "expected", "")), sep="|")
print("active", sorted(i.key for i in sn.walk() if i.kind != "committed"))
"""
    r = python_as(user, "-c", code)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("bad-diffid:1|LayerError|uncompressed content has digest"), lines
    assert lines[1].startswith("corrupt:1|DigestMismatch|sha256:"), lines
    assert lines[2] == "active []"
    snapshots = user.store / "snapshots"
    assert [p.name for p in snapshots.iterdir() if p.name.startswith((".new-", ".trash-"))] == []


def test_single_id_map_drops_owners_with_one_warning_per_layer(users: Users) -> None:
    _, single = users
    r = pybuild_as(single, "run", "--rm", "--network", "none", REF, "sh", "-c", PROBE)
    assert r.returncode == 0, r.stderr
    # owners other than root cannot exist in a one-id namespace; the mode bits stay
    assert r.stdout.splitlines() == ["0:0 2775 /srv/www", "0:0 640 /srv/www/index.html",
                                     "0:0 4755 /srv/www/tool", "0:0 2775 /var/mail",
                                     "0:0 644 /data/new.txt", "data=new.txt", "srv=www"]
    warnings = [line for line in r.stderr.splitlines() if "could not be kept" in line]
    assert len(warnings) == 2, r.stderr            # the 2nd and 3rd layer, once each
    assert all("/etc/subuid" in w for w in warnings), warnings
    index = (_snapshot_fs(single, 1) / "srv" / "www" / "index.html").stat()
    assert (index.st_uid, index.st_gid) == (single.uid, single.gid)
