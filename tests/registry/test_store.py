"""The local store: atomic verified ingest, refs in index.json, locks, crash and concurrency
safety (real processes, SIGKILL mid-write)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from registry import mediatypes as mt
from registry.digest import Digest
from registry.errors import BlobNotFound, DigestMismatch, ImageNotFound, SizeMismatch, StoreBusy, StoreCorrupt
from registry.gc import gc
from registry.store import REF_NAME, DirStore

REPO_ROOT = Path(__file__).resolve().parents[2]


def _consistent(store: DirStore) -> None:
    """Every blob verifies; index.json parses and every entry's blob exists."""
    for digest in store.walk():
        with store.open(digest) as f:
            f.verify_rest()
    doc = json.loads(store.index_path.read_bytes())
    assert doc["schemaVersion"] == 2
    for desc in store.entries():
        assert store.has(desc.digest), f"index.json names missing {desc.digest}"


def test_layout_is_oci(store: DirStore) -> None:
    assert json.loads((store.root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads(store.index_path.read_bytes())["manifests"] == []
    with pytest.raises(StoreCorrupt):
        DirStore(store.root.parent / "nothing", create=False)


def test_ingest_verifies_and_leaves_nothing_on_failure(store: DirStore) -> None:
    data = b"payload" * 1000
    with pytest.raises(DigestMismatch), store.ingest(expected=Digest.of(b"else")) as w:
        w.write(data)
    with pytest.raises(SizeMismatch), store.ingest(size=3) as w:
        w.write(data)
    with pytest.raises(RuntimeError), store.ingest() as w:
        w.write(data)
        raise RuntimeError("writer died")
    assert list(store.walk()) == []
    assert list(store.ingest_dir.iterdir()) == []
    with store.ingest(expected=Digest.of(data), size=len(data)) as w:
        w.write(data)
    assert w.descriptor_info.digest == Digest.of(data)
    assert store.read(Digest.of(data)) == data
    assert oct(store.blob_path(Digest.of(data)).stat().st_mode & 0o777) == "0o644"


def test_put_is_idempotent_and_read_detects_tampering(store: DirStore) -> None:
    d1 = store.put(b"{}", mt.OCI_CONFIG)
    d2 = store.put(b"{}", mt.OCI_CONFIG)
    assert d1 == d2 and store.size(d1.digest) == 2
    store.blob_path(d1.digest).write_bytes(b"[]")
    with pytest.raises(DigestMismatch):
        store.read(d1.digest)
    store.delete(d1.digest)
    store.delete(d1.digest)
    with pytest.raises(BlobNotFound):
        store.open(d1.digest)


def test_open_refuses_symlinked_blob(store: DirStore, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"secret")
    digest = Digest.of(b"secret")
    store.blob_path(digest).symlink_to(target)
    assert not store.has(digest)
    with pytest.raises(StoreCorrupt, match="symlink"):
        store.open(digest)


def test_resumable_ingest(store: DirStore) -> None:
    data = bytes(range(256)) * 100
    with pytest.raises(ConnectionError), \
            store.ingest(expected=Digest.of(data), size=len(data), resume_key="x") as w:
        w.write(data[:1000])
        raise ConnectionError
    with store.ingest(expected=Digest.of(data), size=len(data), resume_key="x") as w:
        assert w.offset == 1000
        w.write(data[1000:])
    assert store.read(Digest.of(data)) == data


def test_tags_dangling_and_untag(store: DirStore) -> None:
    a = store.put(b'{"a":1}', mt.OCI_MANIFEST)
    b = store.put(b'{"b":1}', mt.OCI_MANIFEST)
    store.tag("docker.io/library/x:1", a)
    store.tag("docker.io/library/x:2", a)
    assert store.resolve("docker.io/library/x:1").digest == a.digest
    # Moving a tag away from an image that keeps another name: no dangling entry.
    store.tag("docker.io/library/x:2", b)
    assert len(store.entries()) == 2
    # Moving the last name away: the old image stays as <none> (docker).
    store.tag("docker.io/library/x:1", b)
    untagged = [d for d in store.entries() if REF_NAME not in d.annotations]
    assert [d.digest for d in untagged] == [a.digest]
    # Tagging it again replaces the dangling entry.
    store.tag("docker.io/library/y:1", a)
    assert all(REF_NAME in d.annotations for d in store.entries())
    assert store.untag("docker.io/library/y:1").digest == a.digest
    with pytest.raises(ImageNotFound):
        store.untag("docker.io/library/y:1")
    with pytest.raises(BlobNotFound):
        store.tag("docker.io/library/z:1", store.put(b"q", "x").__class__("x", Digest.of(b"nope"), 4))
    store.add_untagged(a)
    store.add_untagged(a)
    assert sum(1 for d in store.entries() if d.digest == a.digest) == 1


def test_lock_reentrancy_and_exclusion(store: DirStore) -> None:
    with store.lock(), store.lock(shared=True):          # gc (exclusive) may update the index
        store.tag("docker.io/library/a:1", store.put(b"{}", mt.OCI_MANIFEST))
    with store.lock(shared=True), pytest.raises(RuntimeError, match="upgrade"), store.lock():
        pass
    # Another thread's exclusive request waits for our shared hold.
    got = threading.Event()

    def other() -> None:
        with store.lock(timeout=5):
            got.set()

    with store.writing():
        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.2)
        assert not got.is_set()
    t.join(5)
    assert got.is_set()


HOLD = textwrap.dedent("""
    import sys, time
    from registry.store import DirStore
    s = DirStore(sys.argv[1])
    with s.writing():
        print("held", flush=True)
        time.sleep(30)
""")


def test_gc_waits_for_writers_in_other_processes(store: DirStore) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(store.root)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(StoreBusy, match="busy"):
            gc(store, blocking=False)
        with pytest.raises(StoreBusy):
            gc(store, timeout=0.2)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    assert gc(store, timeout=5).removed == ()


TAGGER = textwrap.dedent("""
    import sys
    from registry.store import DirStore
    from registry import mediatypes as mt
    s = DirStore(sys.argv[1])
    who = sys.argv[2]
    for i in range(40):
        desc = s.put(("{\\"%s\\":%d}" % (who, i)).encode(), mt.OCI_MANIFEST)
        s.tag("docker.io/library/%s:%d" % (who, i), desc)
""")


def test_concurrent_taggers_lose_no_update(store: DirStore) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", TAGGER, str(store.root), who], cwd=REPO_ROOT)
             for who in ("p", "q", "r")]
    for p in procs:
        assert p.wait(60) == 0
    names = {name for name, _ in store.refs()}
    assert len(names) == 120
    _consistent(store)


SLOW_INGEST = textwrap.dedent("""
    import sys, time
    from registry.store import DirStore
    s = DirStore(sys.argv[1])
    with s.ingest() as w:
        for i in range(1000):
            w.write(b"x" * 65536)
            if i == 5:
                print("writing", flush=True)
            time.sleep(0.01)
""")


def test_kill_mid_ingest_leaves_no_partial_blob(store: DirStore) -> None:
    before = store.put(b'{"keep":1}', mt.OCI_MANIFEST)
    store.tag("docker.io/library/keep:1", before)
    index_before = store.index_path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_INGEST, str(store.root)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert set(store.walk()) == {before.digest}
    assert store.index_path.read_bytes() == index_before
    _consistent(store)
    leftovers = list(store.ingest_dir.iterdir())
    assert leftovers and all(p.name.startswith("t-") for p in leftovers)
    result = gc(store)
    assert result.ingest_swept == len(leftovers) and list(store.ingest_dir.iterdir()) == []
    assert store.has(before.digest)


def test_atomic_index_write_leftovers_are_swept(store: DirStore) -> None:
    stray = store.root / ".index.json.deadbeef.tmp"
    stray.write_bytes(b"{half")
    gc(store)
    assert not stray.exists()
    _consistent(store)
