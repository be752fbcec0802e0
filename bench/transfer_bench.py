#!/usr/bin/env python3
"""pybuild push/pull vs skopeo on the bigcopy image (216 MB, ~120 MB gzip), interleaved runs.

usage: .venv/bin/python bench/transfer_bench.py [--runs N] [--state DIR] [--no-unpack]

Makes the bigcopy tree with ../shared/bench/lib/genctx.py, one gzip layer of it with
registry.layertar.write_layer in a pybuild store, starts docker-registry on a free loopback port,
then alternates (A B A B ...), each run a whole process:
  push:   `pybuild push` to a new repo       vs `skopeo copy oci:STORE:IMG docker://.../new-repo`
          (both caches that would turn an upload into a mount are deleted first: skopeo's
          blob-info-cache and pybuild's <store>/remote/blob-locations.json)
  pull:   `pybuild pull` into an empty store vs `skopeo copy docker://... oci:EMPTY:IMG`
  unpack: pull + runtime.rootfs.ensure_chain  vs `skopeo copy docker://... containers-storage:`
          (after removing the previous copy, as peer-bench does)
Prints medians and the ratio pybuild/skopeo (targets: push, pull <= 1.0; unpack <= 0.7).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
GENCTX = REPO.parent / "shared" / "bench" / "lib" / "genctx.py"
SKOPEO_CACHE = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")
IMG = "bench/bigcopy:1"


def tree_entries(root: Path):  # type: ignore[no-untyped-def]
    from registry.layertar import TarEntry

    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        base = "" if rel == "." else rel + "/"
        if base:
            st = os.lstat(dirpath)
            out.append(TarEntry(base.rstrip("/"), "dir", mode=st.st_mode & 0o7777, mtime=int(st.st_mtime)))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            out.append(
                TarEntry(
                    base + name,
                    "file",
                    mode=st.st_mode & 0o7777,
                    size=st.st_size,
                    mtime=int(st.st_mtime),
                    source=p,
                )
            )
    return out


def build_image(state: Path) -> Path:
    from registry.imagebuild import rfc3339, single_layer_config, store_image
    from registry.layertar import write_layer
    from registry.store import DirStore

    store_root = state / "src-store"
    if (store_root / "index.json").exists():
        store = DirStore(store_root)
        if any(name == f"docker.io/{IMG}" for name, _ in store.refs()):
            return store_root
    tree = state / "ctx"
    if not tree.exists():
        subprocess.run([sys.executable, str(GENCTX), "bigcopy", str(tree)], check=True)
    store = DirStore(store_root)
    t0 = time.time()
    layer = write_layer(tree_entries(tree / "tree" if (tree / "tree").is_dir() else tree), store, "gzip")
    cfg = single_layer_config(layer, created=rfc3339(1700000000), created_by="bench bigcopy")
    store_image(store, cfg, [layer], tags=(f"docker.io/{IMG}",))
    print(
        f"built image: {layer.uncompressed_size / 1e6:.1f} MB uncompressed, "
        f"{layer.descriptor.size / 1e6:.1f} MB gzip in {time.time() - t0:.1f}s",
        file=sys.stderr,
    )
    return store_root


def timed(argv: list[str], *, env: dict[str, str] | None = None, shell_prep=None) -> float:  # type: ignore[no-untyped-def]
    if shell_prep:
        shell_prep()
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{proc.stderr[-3000:]}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--state", default="/tmp/pybuild-transfer-bench")
    ap.add_argument("--no-unpack", action="store_true")
    args = ap.parse_args()
    state = Path(args.state)
    state.mkdir(parents=True, exist_ok=True)
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    src = build_image(state)

    from tests.support.registry_server import start_registry, stop

    regdir = Path(tempfile.mkdtemp(prefix="reg-", dir=state))
    addr, proc = start_registry(regdir)
    py = [sys.executable, "-m", "builder"]
    work = Path(tempfile.mkdtemp(prefix="w-", dir=state))
    results: dict[str, list[float]] = {
        k: []
        for k in (
            "push-pybuild",
            "push-skopeo",
            "pull-pybuild",
            "pull-skopeo",
            "unpack-pybuild",
            "unpack-skopeo",
        )
    }
    try:
        # the image both pull benchmarks fetch
        subprocess.run(
            [*py, "--root", str(src), "push", "-q", f"docker.io/{IMG}", f"{addr}/{IMG}"],
            check=True,
            capture_output=True,
            cwd=REPO,
        )
        ref = f"{addr}/{IMG}"
        unpack_code = (
            "import sys; from pathlib import Path; from registry.store import DirStore; "
            "from registry.remote.pull import pull; from runtime.rootfs import ensure_chain, "
            "load_manifest; from runtime.run import open_snapshotter; root = Path(sys.argv[1]); "
            "s = DirStore(root); "
            "d = pull(s, sys.argv[2]); ensure_chain(s, open_snapshotter(root), load_manifest(s, d))"
        )
        have_unpack = not args.no_unpack and shutil.which("podman") is not None
        try:
            import runtime.rootfs as _rootfs  # noqa: F401
        except ImportError:
            have_unpack = False
        for i in range(args.runs + 1):  # run 0 is the warm-up, not counted
            stamp = f"{time.time_ns()}"

            def clear_caches() -> None:
                SKOPEO_CACHE.unlink(missing_ok=True)
                (src / "remote" / "blob-locations.json").unlink(missing_ok=True)

            r = {}
            r["push-pybuild"] = timed(
                [*py, "--root", str(src), "push", "-q", f"docker.io/{IMG}", f"{addr}/bench/pb-{stamp}:1"],
                shell_prep=clear_caches,
            )
            r["push-skopeo"] = timed(
                [
                    "skopeo",
                    "copy",
                    "-q",
                    "--dest-tls-verify=false",
                    f"oci:{src}:docker.io/{IMG}",
                    f"docker://{addr}/bench/sk-{stamp}:1",
                ],
                shell_prep=clear_caches,
            )
            dest_pb, dest_sk = work / f"pb-{i}", work / f"sk-{i}"
            r["pull-pybuild"] = timed([*py, "--root", str(dest_pb), "pull", "-q", ref])
            r["pull-skopeo"] = timed(
                ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dest_sk}:{IMG}"]
            )
            shutil.rmtree(dest_pb, ignore_errors=True)
            shutil.rmtree(dest_sk, ignore_errors=True)
            if have_unpack:
                dest_un = work / f"un-{i}"
                r["unpack-pybuild"] = timed([sys.executable, "-c", unpack_code, str(dest_un), ref])

                def rmi() -> None:
                    subprocess.run(["podman", "rmi", "-f", ref], capture_output=True)

                r["unpack-skopeo"] = timed(
                    [
                        "skopeo",
                        "copy",
                        "-q",
                        "--src-tls-verify=false",
                        f"docker://{ref}",
                        f"containers-storage:{ref}",
                    ],
                    shell_prep=rmi,
                )
                subprocess.run(["rm", "-rf", str(dest_un)], check=False)
            if i > 0:
                for k, v in r.items():
                    results[k].append(v)
            print(
                f"run {i}{' (warm-up)' if i == 0 else ''}: " + " ".join(f"{k}={v:.3f}" for k, v in r.items()),
                file=sys.stderr,
            )
    finally:
        stop(proc)
        shutil.rmtree(regdir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["podman", "rmi", "-f", f"{addr}/{IMG}"], capture_output=True, check=False)

    from registry.store import DirStore

    size = DirStore(src).size(next(iter(DirStore(src).walk())))  # any blob: just to touch the store
    del size
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nbigcopy image, {args.runs} interleaved runs each (wall seconds, whole process); "
          f"load average at start {load_start}, at end {load}\n")
    print("| operation | pybuild median (min-max) | skopeo median (min-max) | ratio | target |")
    print("|---|---|---|---|---|")
    for op, target in (("push", "<= 1.0"), ("pull", "<= 1.0"), ("unpack", "<= 0.7")):
        a, b = results[f"{op}-pybuild"], results[f"{op}-skopeo"]
        if not a:
            print(f"| {op} | n/a | n/a | n/a | {target} |")
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        label = {
            "push": "push oci→registry",
            "pull": "pull registry→store",
            "unpack": "pull + unpack (vs containers-storage)",
        }[op]
        print(
            f"| {label} | {ma:.3f} ({min(a):.3f}-{max(a):.3f}) | {mb:.3f} ({min(b):.3f}-{max(b):.3f}) "
            f"| {ma / mb:.2f}x | {target} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
