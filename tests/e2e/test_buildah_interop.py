"""Interop oracle: the examples built by buildah (`buildah bud --layers --isolation chroot`, vfs
storage in a per-test root) and by pybuild give the same file tree: paths, types, modes, owners,
contents and link targets (mtimes ignored). Both images are unpacked by the same code
(runtime.unpack) from their OCI layouts, so only the builders are compared."""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from registry.image import StoreImage
from registry.store import DirStore
from runtime.unpack import apply_layer
from tests.e2e.conftest import EXAMPLES, pybuild

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_peer("buildah"), pytest.mark.slow]

# buildah 1.28 (Debian 12) has no Dockerfile heredocs (added in 1.33).
UNSUPPORTED_BY_PEER = {"heredoc": "buildah 1.28 does not support Dockerfile heredocs"}
NAMES = sorted(p.name for p in EXAMPLES.iterdir() if (p / "Dockerfile").is_file())


def unpack(layout_or_store: Path, desc_filter: str | None, dest: Path) -> None:
    store = DirStore(layout_or_store, create=False)
    entries = store.entries()
    if desc_filter is not None:
        entries = [d for d in entries
                   if d.annotations.get("org.opencontainers.image.ref.name") == desc_filter]
    assert len(entries) >= 1, f"no image {desc_filter!r} in {layout_or_store}"
    image = StoreImage(store, entries[-1])
    dest.mkdir(parents=True)
    for layer in image.layers():
        with layer.open_uncompressed() as plain:
            apply_layer(plain, dest, layer=str(layer.digest))
            while plain.read(1 << 20):      # to EOF: the blob digest is verified there
                pass


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            rel = str(full.relative_to(root))
            kind = stat.S_IFMT(st.st_mode)
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                extra = hashlib.sha256(full.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(full)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                extra = (os.major(st.st_rdev), os.minor(st.st_rdev))
            out[rel] = (kind, oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid, extra)
    return out


def buildah(root: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = ["buildah", "--root", str(root / "root"), "--runroot", str(root / "runroot"),
            "--storage-driver", "vfs"]
    return subprocess.run([*base, *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          check=False)


@pytest.fixture(scope="module")
def peer_root(tmp_path_factory: pytest.TempPathFactory, busybox_image) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("buildah")
    src = f"oci:{busybox_image.store.root}:{busybox_image.ref}"
    res = buildah(root, "pull", "-q", src)
    assert res.returncode == 0, res.stderr
    res = buildah(root, "tag", res.stdout.strip().splitlines()[-1], "docker.io/library/busybox:latest")
    assert res.returncode == 0, res.stderr
    return root


BENCH = Path("/work/shared/bench")
BENCH_CASES = ["layers", "multistage"]   # whiteouts, opaque dirs, links, chmod/chown; COPY --from
# Files whose bytes depend on the moment the RUN made them (compared without content): a gzip of
# a tar with build-time mtimes, and `find /data -type f | sort > /data/INDEX`, where find and the
# shell's redirection race (INDEX lists itself or not, with any builder).
CLOCK_DEPENDENT = {"bench-multistage": {"opt/app/assets.tar.gz"}, "bench-layers": {"data/INDEX"}}


@pytest.fixture(scope="module")
def bench_contexts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    genctx = BENCH / "lib" / "genctx.py"
    if not genctx.is_file():
        pytest.skip(f"{genctx} not present (the shared bench cases)")
    out = tmp_path_factory.mktemp("bench-ctx")
    for case in BENCH_CASES:
        subprocess.run(["python3", str(genctx), case, str(out / case)], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("case", BENCH_CASES)
def test_bench_case_same_tree_as_buildah(case: str, tmp_path: Path, peer_root: Path, busybox_store,  # type: ignore[no-untyped-def]
                                         bench_contexts: Path) -> None:
    _compare(bench_contexts / case, f"bench-{case}", tmp_path, peer_root, busybox_store)


@pytest.mark.parametrize("name", NAMES)
def test_same_tree_as_buildah(name: str, tmp_path: Path, peer_root: Path, busybox_store) -> None:  # type: ignore[no-untyped-def]
    if name in UNSUPPORTED_BY_PEER:
        pytest.skip(UNSUPPORTED_BY_PEER[name])
    _compare(EXAMPLES / name, name, tmp_path, peer_root, busybox_store)


def _compare(example: Path, name: str, tmp_path: Path, peer_root: Path, busybox_store) -> None:  # type: ignore[no-untyped-def]
    flags = [w for line in _lines(example / "build-args.txt") for w in line]
    root = busybox_store.store.root
    tag = f"interop-{name}"
    for pre in _lines(example / "prebuild.txt"):
        res = pybuild(root, "build", "-q", *pre, ".", cwd=example)
        assert res.returncode == 0, res.stderr
        peer = buildah(peer_root, "bud", "--layers", "--isolation", "chroot", "--pull=false",
                       "--format", "docker", "-q", *pre, ".", cwd=example)
        assert peer.returncode == 0, peer.stderr
    res = pybuild(root, "build", "-q", *flags, "-t", tag, ".", cwd=example)
    assert res.returncode == 0, res.stderr
    peer = buildah(peer_root, "bud", "--layers", "--isolation", "chroot", "--pull=false", "--format",
                   "docker", "-q", *flags, "-t", tag, ".", cwd=example)
    assert peer.returncode == 0, peer.stderr
    layout = tmp_path / "peer-layout"
    pushed = buildah(peer_root, "push", tag, f"oci:{layout}:{tag}")
    assert pushed.returncode == 0, pushed.stderr

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    unpack(root, f"docker.io/library/{tag}:latest", ours)
    unpack(layout, tag, theirs)
    a, b = tree(ours), tree(theirs)
    only_ours = sorted(set(a) - set(b))
    # buildah leaves the mount points of RUN behind (/etc/hosts, /run/secrets, a cache mount's
    # parent...) as empty files/directories; BuildKit and pybuild remove them. Nothing else may
    # differ.
    stubs = {p for p in set(b) - set(a) if _empty(theirs / p)}
    only_theirs = sorted(set(b) - set(a) - stubs)
    loose = CLOCK_DEPENDENT.get(name, set())
    differ = sorted(p for p in set(a) & set(b)
                    if (a[p][:4] != b[p][:4] if p in loose else a[p] != b[p]))
    assert not only_ours and not only_theirs and not differ, (
        f"only pybuild: {only_ours[:20]}\nonly buildah: {only_theirs[:20]}\n"
        + "\n".join(f"{p}: pybuild {a[p]} buildah {b[p]}" for p in differ[:20]))


def _empty(path: Path) -> bool:
    if path.is_symlink():
        return False
    if path.is_file():
        return path.stat().st_size == 0
    return path.is_dir() and all(_empty(c) for c in path.iterdir())


def _lines(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    return [shlex.split(line) for line in path.read_text().splitlines() if line.strip()]
