"""pybuild reads OCI image layouts that other tools wrote (testdata/layouts/)."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

from registry.archive import SaveItem, load, save
from registry.gc import gc
from registry.image import history_rows, list_images, resolve_image
from registry.store import DirStore

LAYOUTS = Path(__file__).resolve().parents[2] / "testdata" / "layouts"


def test_umoci_layout(tmp_path: Path) -> None:
    root = tmp_path / "umoci"
    shutil.copytree(LAYOUTS / "umoci-motd", root)
    store = DirStore(root, create=False)
    (entry,) = list_images(store).entries
    assert (entry.repository(), entry.tag()) == ("umoci", "v1")
    img = resolve_image(store, "umoci:v1")
    assert img.config.author == "pybuild tests"
    assert img.config.config.cmd == ("sh",) and "A=1" in img.config.config.env
    (layer,) = img.layers()
    with layer.open_uncompressed() as f, tarfile.open(fileobj=f, mode="r|") as tf:
        files = {m.name.lstrip("./"): tf.extractfile(m).read() for m in tf if m.isfile()}  # type: ignore[union-attr]
    assert files == {"etc/motd": b"made by umoci\n"}
    assert history_rows(img)[0].image_id == img.id
    assert gc(store, dry_run=True).removed == ()
    buf = io.BytesIO()
    save(store, [SaveItem(img, img.names)], buf, fmt="oci-archive")
    (loaded,) = load(DirStore(tmp_path / "copy"), io.BytesIO(buf.getvalue()))
    assert loaded.descriptor.digest == img.digest and loaded.name == "docker.io/library/umoci:v1"
