"""The child side of the rootless unpack (runtime.rootfs.unpack_in_userns, nsinit apply-mode op
"unpack-chain"), exercised as root, where no user namespace is needed: the same loop commits
the ChainID snapshots through a real sandbox child (zstd included: the child, started with
`python -I -S`, finds the codec modules through the path it is given), its result
round-trips through JSON, and its errors come back as their own classes with their fields.
The unprivileged end-to-end cases are in tests/runtime/test_rootless_unpack.py."""

from __future__ import annotations

import pytest

from registry.errors import DigestMismatch
from registry.imagebuild import store_image
from registry.layertar import LayerBlob, TarEntry, opaque, whiteout, write_layer
from registry.model import ContainerConfig, History, ImageConfig, chain_ids
from registry.store import DirStore
from runtime import rootfs
from runtime.errors import LayerError, SandboxError
from runtime.snapshots import OverlaySnapshotter

pytestmark = [pytest.mark.needs_root]


def _layers(store: DirStore) -> list[LayerBlob]:
    return [
        write_layer([TarEntry("srv", "dir", mode=0o755),
                     TarEntry("srv/www", "dir", mode=0o2775, uid=33, gid=33),
                     TarEntry("srv/www/a", "file", mode=0o4750, uid=33, gid=33, data=b"a", size=1),
                     TarEntry("srv/old", "file", data=b"o", size=1)], store, "gzip"),
        write_layer([whiteout("srv/old"), TarEntry("srv/www", "dir", mode=0o2775, uid=33, gid=33),
                     opaque("srv/www"), TarEntry("srv/www/b", "file", uid=1000, gid=1000, data=b"b",
                                                 size=1)], store, "zstd"),
    ]


def _action(store: DirStore, sn: OverlaySnapshotter, layers: list[LayerBlob],
            diff_ids: list[str] | None = None) -> dict[str, object]:
    return {"op": rootfs.USERNS_OP, "store": str(store.root), "snapshots": str(sn.root),
            "xattr_ns": "user", "layers": [lay.descriptor.to_dict() for lay in layers],
            "diff_ids": diff_ids or [str(lay.diff_id) for lay in layers],
            "id_limit": 65537}


def test_child_op_commits_the_chain_through_a_sandbox_child(store: DirStore) -> None:
    from runtime import sandbox

    layers = _layers(store)
    sn = OverlaySnapshotter(store.subdir("snapshots"))
    assert any("site-packages" in p for p in sandbox.codec_search_paths())
    out = sandbox.apply(_action(store, sn, layers), root=str(sn.root))
    done = rootfs._Progress.from_doc(out)
    keys = [str(c) for c in chain_ids([lay.diff_id for lay in layers])]
    assert done.top == keys[-1] and done.unpacked == keys and done.reused == []
    assert [d for d, _ in done.layers] == [str(lay.descriptor.digest) for lay in layers]
    assert [s.files for s in done.stats] == [2, 1] and done.stats[1].whiteouts == 1
    www = sn.path(keys[0]) / "srv" / "www"
    st = (www / "a").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (33, 33, 0o4750)
    assert www.stat().st_mode & 0o7777 == 0o2775
    assert (sn.path(keys[1]) / "srv" / "www" / "b").stat().st_uid == 1000
    # a second call finds everything committed
    again = rootfs._Progress.from_doc(sandbox.apply(_action(store, sn, layers), root=str(sn.root)))
    assert again.unpacked == [] and again.reused == keys


def test_child_errors_keep_their_class_fields_and_clean_up(store: DirStore) -> None:
    layers = _layers(store)
    sn = OverlaySnapshotter(store.subdir("snapshots"))
    wrong = [str(layers[0].diff_id), str(layers[0].diff_id)]
    out = rootfs.unpack_in_userns(_action(store, sn, layers, wrong))
    exc = rootfs._rebuild_error(out["error"])
    assert type(exc) is LayerError
    assert exc.layer == str(layers[1].descriptor.digest)
    assert exc.why.startswith("uncompressed content has digest")
    assert str(exc).startswith(f"layer {layers[1].descriptor.digest}: uncompressed content")
    assert [i.kind for i in sn.walk()] == ["committed"]      # the partial snapshot is gone

    payload = b"p" * 4096
    plain = write_layer([TarEntry("payload", "file", data=payload, size=len(payload))], store, "none")
    blob = store.blobs_dir / plain.descriptor.digest.hex
    data = bytearray(blob.read_bytes())
    data[data.index(payload) + 10] ^= 0xFF          # the tar stays readable, the digest does not
    blob.write_bytes(bytes(data))
    out = rootfs.unpack_in_userns(_action(store, sn, [plain]))
    mismatch = rootfs._rebuild_error(out["error"])
    assert type(mismatch) is DigestMismatch
    assert mismatch.expected == str(plain.descriptor.digest) and mismatch.actual != mismatch.expected
    assert str(mismatch).startswith(f"blob {plain.descriptor.digest}: content has digest")
    assert [i.kind for i in sn.walk()] == ["committed"]

    odd = rootfs._rebuild_error({"module": "os", "name": "system", "message": "boom"})
    assert type(odd) is SandboxError and "boom" in str(odd)


def test_root_unpacks_in_process(store: DirStore) -> None:
    """As root nothing changes: no mapping, no child."""
    sn = OverlaySnapshotter(store.subdir("snapshots"))
    assert rootfs._rootless_plan(sn, None) == (None, "")
    layers = _layers(store)
    config = ImageConfig("amd64", "linux", ContainerConfig(), tuple(lay.diff_id for lay in layers),
                         tuple(History(created_by=f"l{i}") for i in range(len(layers))))
    desc = store_image(store, config, layers, tags=["example.com/owners:1"])
    report = rootfs.ensure_chain_report(store, sn, rootfs.load_manifest(store, desc))
    assert len(report.unpacked) == 2 and all(s.owners_dropped == 0 for s in report.stats)
