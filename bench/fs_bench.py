"""Filesystem-side benchmarks of runtime/ (unpack, ChainID snapshots, layer commit), each
against its physical reference on the same bytes, interleaved (A B A B ...), medians.

  .venv/bin/python bench/fs_bench.py [--runs 5] [--work /tmp/pybuild-fsbench] [--only unpack,chain,diff]

Input: the bench's bigcopy tree (../shared/bench/lib/genctx.py bigcopy: 5,000 files, 212 MB).
1. unpack:  apply_layer(tar) vs `tar -xf` into a fresh directory (MB/s of tar input).
2. chain:   ensure_chain of a gzip layer from the store (verify blob digest + diff_id, unpack
            into an overlay snapshot) vs `pigz -dc blob | tar -xf -`; then the second
            ensure_chain (nothing to unpack).
3. diff:    write_diff of an overlay upper holding the tree (tar + igzip level 1 + sha256 x2
            + store ingest with fsync) vs `tar -cf - | igzip -1` (C, Debian's isal package),
            `| python -m isal.igzip -1` and `| pigz -1`; and with zstd vs `| zstd -3 -T2`.
4. pull:    registry.remote.pull + ensure_chain from a local docker-registry vs
            `skopeo copy docker://… containers-storage:` (the issue's 0.7x target).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from registry.compression import compressor  # noqa: E402
from registry.imagebuild import store_image  # noqa: E402
from registry.layertar import LayerBlob  # noqa: E402
from registry.model import ContainerConfig, Descriptor, Digest, ImageConfig  # noqa: E402
from registry.store import DirStore  # noqa: E402
from runtime.diff import write_diff  # noqa: E402
from runtime.rootfs import ensure_chain_report, load_manifest  # noqa: E402
from runtime.snapshots import OverlaySnapshotter  # noqa: E402
from runtime.unpack import apply_layer  # noqa: E402

GENCTX = Path("/work/shared/bench/lib/genctx.py")


def sh(cmd: str) -> None:
    subprocess.run(["bash", "-c", cmd], check=True)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def report(name: str, mb: float, results: dict[str, list[float]]) -> None:
    print(f"\n## {name}  (input {mb:.1f} MB; load average {_load()})")
    print("| what | median s | min-max s | MB/s |")
    print("|---|---|---|---|")
    for label, vals in results.items():
        med = statistics.median(vals)
        print(f"| {label} | {med:.3f} | {min(vals):.3f}-{max(vals):.3f} | {mb / med:.0f} |")
    labels = list(results)
    for other in labels[1:]:
        base = statistics.median(results[other])
        print(f"ratio {labels[0]} / {other}: {statistics.median(results[labels[0]]) / base:.2f}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def prepare_inputs(work: Path) -> tuple[Path, Path]:
    ctx = work / "ctx"
    if not (ctx / "tree").is_dir():
        subprocess.run([sys.executable, str(GENCTX), "bigcopy", str(ctx)], check=True,
                       stdout=subprocess.DEVNULL)
    tar = work / "big.tar"
    if not tar.exists():
        sh(f"tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1700000000 -cf {tar} "
           f"-C {ctx} tree")
    return ctx / "tree", tar


def bench_unpack(work: Path, tar: Path, runs: int) -> None:
    mb = tar.stat().st_size / 1e6
    res: dict[str, list[float]] = {"pybuild apply_layer": [], "GNU tar -xf": []}
    made: list[Path] = []
    for i in range(runs):
        for label in (list(res) if i % 2 == 0 else list(reversed(res))):
            d = work / f"x-{i}-{len(made)}"
            d.mkdir()
            made.append(d)
            if label.startswith("pybuild"):
                def run(d: Path = d) -> None:
                    with tar.open("rb") as f:
                        apply_layer(f, d)
                res[label].append(timed(run))
            else:
                res[label].append(timed(lambda d=d: sh(f"tar -xf {tar} -C {d}")))  # type: ignore[misc]
    report("unpack an uncompressed layer tar into a fresh directory", mb, res)
    for d in made:
        shutil.rmtree(d)


def gzip_image(work: Path, tar: Path) -> tuple[DirStore, Descriptor, Path]:
    store = DirStore(work / "store")
    import hashlib

    diff = hashlib.sha256()
    with store.ingest() as blob:
        comp = compressor(blob, "gzip")
        with tar.open("rb") as f:
            while chunk := f.read(1 << 20):
                diff.update(chunk)
                comp.write(chunk)
        comp.close()
    info = blob.descriptor_info
    from registry import mediatypes as mt

    layer = LayerBlob(Descriptor(mt.OCI_LAYER_GZIP, info.digest, info.size), Digest.from_hasher(diff),
                      tar.stat().st_size)
    config = ImageConfig("amd64", "linux", ContainerConfig(), (layer.diff_id,))
    desc = store_image(store, config, [layer], tags=["bench/bigcopy:latest"])
    return store, desc, store.blob_path(info.digest)


def bench_chain(work: Path, tar: Path, runs: int) -> None:
    store, desc, blob = gzip_image(work, tar)
    manifest = load_manifest(store, desc)
    mb = tar.stat().st_size / 1e6
    res: dict[str, list[float]] = {"pybuild ensure_chain (verify+gunzip+unpack)": [],
                                   "pigz -dc | tar -xf": []}
    second: list[float] = []
    made: list[Path] = []
    for i in range(runs):
        for label in (list(res) if i % 2 == 0 else list(reversed(res))):
            d = work / f"c-{i}-{len(made)}"
            made.append(d)
            if label.startswith("pybuild"):
                sn = OverlaySnapshotter(d)
                r = ensure_chain_report(store, sn, manifest)
                assert len(r.unpacked) == 1
                res[label].append(r.seconds)
                again = ensure_chain_report(store, sn, manifest)
                assert again.unpacked == ()
                second.append(again.seconds)
            else:
                d.mkdir()
                res[label].append(timed(lambda d=d: sh(f"pigz -dc {blob} | tar -xf - -C {d}")))  # type: ignore[misc]
    report(f"unpack a gzip layer from the store ({blob.stat().st_size / 1e6:.1f} MB compressed)", mb, res)
    print(f"second ensure_chain (already unpacked): median {statistics.median(second) * 1000:.2f} ms")
    for d in made:
        shutil.rmtree(d)


def bench_diff(work: Path, tree: Path, runs: int) -> None:
    """Layer commit (issue 6: within 2x of `tar -cf - DIR | <the chosen compressor>`), for gzip
    (isal level 1: the C `igzip -1` of Debian's isal package when installed, and python-isal's
    CLI) and zstd (-3, 2 threads, as registry.compression)."""
    sn = OverlaySnapshotter(work / "diff-snaps")
    if not sn.exists("step"):
        sn.prepare("step", None)
        sh(f"cp -a {tree} {sn.upper_dir('step')}/tree")
    upper = sn.upper_dir("step")
    mb = sum(p.stat().st_size for p in upper.rglob("*") if p.is_file()) / 1e6
    out = work / "ref.out"
    tar = f"tar -cf - -C {upper} ."
    gz: dict[str, str] = {}
    if shutil.which("igzip"):
        gz["tar -cf - | igzip -1 (C, isa-l)"] = f"{tar} | igzip -1 -c > {out}"
    gz["tar -cf - | python -m isal.igzip -1"] = f"{tar} | {sys.executable} -m isal.igzip -1 -c > {out}"
    gz["tar -cf - | pigz -1"] = f"{tar} | pigz -1 -c > {out}"
    zst = {"tar -cf - | zstd -3 -T2": f"{tar} | zstd -q -3 -T2 -c > {out}"}
    for codec, refs in (("gzip", gz), ("zstd", zst)):
        label = f"pybuild write_diff ({codec}, into the store)"
        res: dict[str, list[float]] = {label: [], **{k: [] for k in refs}}
        for i in range(runs):
            store = DirStore(work / f"dstore-{i}")
            for name in (list(res) if i % 2 == 0 else list(reversed(res))):
                if name == label:
                    def commit(store: DirStore = store, c: str = codec) -> None:
                        write_diff(store, sn, "step", codec=c)  # type: ignore[arg-type]
                    res[name].append(timed(commit))
                else:
                    res[name].append(timed(lambda cmd=refs[name]: sh(cmd)))  # type: ignore[misc]
            shutil.rmtree(store.root)
        report(f"layer commit of a 200 MB overlay upper, {codec}", mb, res)
    out.unlink(missing_ok=True)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_pull(work: Path, tar: Path, runs: int) -> None:
    """pybuild pull + unpack (registry.remote.pull + ensure_chain) vs `skopeo copy docker://…
    containers-storage:` (which pulls and extracts), from a local docker-registry."""
    import urllib.request

    store, desc, blob = gzip_image(work, tar)
    port = _free_port()
    regdir = work / "registry-data"
    shutil.rmtree(regdir, ignore_errors=True)
    env = {**os.environ, "REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}",
           "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(regdir)}
    proc = subprocess.Popen(["docker-registry", "serve", str(REPO / "testdata" / "registry.yml")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ref = f"127.0.0.1:{port}/bench/bigcopy:latest"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)  # noqa: S310
                break
            except OSError:
                time.sleep(0.1)
        sh(f"skopeo copy -q --dest-tls-verify=false oci:{store.root}:bench/bigcopy:latest docker://{ref}")
        from registry.remote.pull import pull

        mb = tar.stat().st_size / 1e6
        res: dict[str, list[float]] = {"pybuild pull + ensure_chain": [],
                                       "skopeo copy docker:// containers-storage:": []}
        split: list[tuple[float, float]] = []
        for i in range(runs):
            for label in (list(res) if i % 2 == 0 else list(reversed(res))):
                if label.startswith("pybuild"):
                    root = work / f"pull-{i}"
                    shutil.rmtree(root, ignore_errors=True)
                    t0 = time.perf_counter()
                    fresh = DirStore(root)
                    d = pull(fresh, ref)
                    t1 = time.perf_counter()
                    r = ensure_chain_report(fresh, OverlaySnapshotter(root / "snapshots"),
                                            load_manifest(fresh, d))
                    t2 = time.perf_counter()
                    assert len(r.unpacked) == 1
                    res[label].append(t2 - t0)
                    split.append((t1 - t0, t2 - t1))
                    shutil.rmtree(root)
                else:
                    subprocess.run(["podman", "rmi", "-f", ref], capture_output=True, check=False)
                    res[label].append(timed(lambda: sh(
                        f"skopeo copy -q --src-tls-verify=false docker://{ref} containers-storage:{ref}")))
        subprocess.run(["podman", "rmi", "-f", ref], capture_output=True, check=False)
        report("pull + unpack of the bigcopy image from a local registry", mb, res)
        print(f"pybuild split: pull median {statistics.median(s[0] for s in split):.3f} s, "
              f"ensure_chain median {statistics.median(s[1] for s in split):.3f} s")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(regdir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path("/tmp/pybuild-fsbench"))
    ap.add_argument("--only", default="unpack,chain,diff,pull")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tree, tar = prepare_inputs(args.work)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, kernel {os.uname().release}; "
          f"tree {tree} ({sum(1 for _ in tree.rglob('*'))} entries), tar {tar.stat().st_size} bytes")
    only = set(args.only.split(","))
    if "unpack" in only:
        bench_unpack(args.work, tar, args.runs)
    if "chain" in only:
        bench_chain(args.work, tar, args.runs)
    if "diff" in only:
        bench_diff(args.work, tree, args.runs)
    if "pull" in only:
        bench_pull(args.work, tar, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
