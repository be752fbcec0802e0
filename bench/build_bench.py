#!/usr/bin/env python3
"""pybuild build vs buildah on ../shared/bench's cases, interleaved in the same run.

usage: .venv/bin/python bench/build_bench.py [--cases small,layers,bigcopy] [--runs 5]
                                            [--state /tmp/pybuild-build-bench] [--keep]

For each case (context from ../shared/bench/lib/genctx.py, Dockerfile unchanged):
  cold   = build with --no-cache (base image already in each tool's storage),
  no-op  = build again with nothing changed,
  incr   = one line appended to the case's MUTATE file (case.conf), then build;
  touch  = every context file's mtime changed (content unchanged), then build;
each measured RUNS times, pybuild and buildah alternating (A B B A ...), medians reported with
the ratio pybuild/buildah. buildah runs as in RESULTS.md (`bud --layers --isolation oci
--network none --pull=false -q`, overlay driver) but with a private storage root under --state;
pybuild runs with `--network none` and a private store. Both start from the same busybox image
(built offline by tests/support, copied into buildah with `buildah pull oci:`).

Commit check: for the biggest layer of the cold pybuild builds, pybuild's commit time (diff +
tar + isal gzip -1 + store, from the build record) against `tar -cf - DIR | python -m
isal.igzip -1 > FILE && sync FILE` over the same committed snapshot directory.
Results: a markdown table on stdout and results.{md,json} under --state.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PYBUILD_SHARED_BENCH", REPO.parent / "shared" / "bench"))
if not SHARED.is_dir():
    SHARED = Path("/work/shared/bench")
PY = sys.executable
TARGETS = {"cold": 0.8, "no-op": 0.3, "incr": 0.8}
# extra metric: every file's mtime changed, content not (pybuild then skips its build memo and
# runs the engine: keys from content through the stat cache); held to the no-op target too.
METRICS = {**TARGETS, "touch": 0.3}
sys.path.insert(0, str(REPO))


def sh(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


def timed(cmd: list[str], cwd: Path | None = None) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, cwd=cwd, check=False)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()[-3000:]}")
    return took


class Tools:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.store = state / "pybuild-store"
        self.broot = state / "buildah"

    def pybuild(self, ctx: Path, tag: str, *extra: str) -> list[str]:
        return [PY, "-m", "builder", "--root", str(self.store), "build", "-q", "--network", "none",
                *extra, "-t", tag, str(ctx)]

    def buildah_base(self) -> list[str]:
        return ["buildah", "--root", str(self.broot / "root"), "--runroot", str(self.broot / "runroot"),
                "--storage-driver", "overlay"]

    def buildah(self, ctx: Path, tag: str, *extra: str) -> list[str]:
        return [*self.buildah_base(), "bud", "--layers", "--isolation", "oci", "--network", "none",
                "--pull=false", "-q", *extra, "-t", tag, str(ctx)]

    def setup(self) -> None:
        from registry.store import DirStore
        from tests.support.images import BUSYBOX_REF, build_busybox

        if not (self.store / "index.json").is_file():
            build_busybox(DirStore(self.store))
        if sh([*self.buildah_base(), "inspect", "docker.io/library/busybox:latest"]).returncode != 0:
            res = sh([*self.buildah_base(), "pull", "-q", f"oci:{self.store}:{BUSYBOX_REF}"])
            if res.returncode != 0:
                raise SystemExit(f"buildah pull failed: {res.stderr}")
            image = res.stdout.strip().splitlines()[-1]
            sh([*self.buildah_base(), "tag", image, "docker.io/library/busybox:latest"], check=True)


def contexts(state: Path, cases: list[str]) -> dict[str, tuple[Path, str]]:
    out = {}
    for case in cases:
        ctx = state / "ctx" / case
        if not (ctx / "Dockerfile").is_file():
            res = sh(["python3", str(SHARED / "lib" / "genctx.py"), case, str(ctx)])
            if res.returncode != 0:
                raise SystemExit(f"genctx {case}: {res.stderr}")
        text = (SHARED / "cases" / case / "case.conf").read_text()
        conf = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        out[case] = (ctx, conf["MUTATE"].strip().strip('"'))
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def bench_case(tools: Tools, case: str, ctx: Path, mutate: str, runs: int) -> dict[str, dict[str, float]]:
    tag = f"bench-{case}"
    # warm both: base image unpacked, cache filled
    timed(tools.pybuild(ctx, tag))
    timed(tools.buildah(ctx, tag))
    res: dict[str, dict[str, list[float]]] = {m: {"pybuild": [], "buildah": []} for m in METRICS}
    for metric in METRICS:
        for i in range(runs):
            order = ["pybuild", "buildah"] if i % 2 == 0 else ["buildah", "pybuild"]
            if metric == "incr":
                with (ctx / mutate).open("a") as f:
                    f.write(f"# bench edit {time.time_ns()}\n")
            elif metric == "touch":
                now = time.time()
                for p in ctx.rglob("*"):
                    os.utime(p, (now, now), follow_symlinks=False)
            for tool in order:
                extra = ("--no-cache",) if metric == "cold" else ()
                make = tools.pybuild if tool == "pybuild" else tools.buildah
                cmd = make(ctx, tag, *extra)
                res[metric][tool].append(timed(cmd))
            print(f"  {case} {metric} run {i + 1}: pybuild {res[metric]['pybuild'][-1]:.3f}s "
                  f"buildah {res[metric]['buildah'][-1]:.3f}s", file=sys.stderr)
    return {m: {t: median(v) for t, v in d.items()} for m, d in res.items()}


def commit_check(tools: Tools, case: str, ctx: Path, runs: int) -> dict[str, float] | None:
    """pybuild's commit of its biggest layer vs GNU tar + isal gzip -1 over the same directory."""
    from builder.records import Records
    from registry.image import resolve_image
    from registry.model import chain_ids
    from registry.store import DirStore
    from runtime.snapshots import default_snapshotter

    store = DirStore(tools.store)
    commits: list[float] = []
    layer = None
    for _ in range(runs):
        timed(tools.pybuild(ctx, f"bench-{case}", "--no-cache"))
        rec = Records(store).last()
        assert rec is not None
        final = [str(d.digest) for d in resolve_image(store, f"bench-{case}").manifest.layers]
        big = max((s for s in rec.steps if s.status == "RAN" and s.diff_size and s.layer in final),
                  key=lambda s: s.diff_size or 0, default=None)
        if big is None or big.commit_seconds is None:
            return None
        commits.append(big.commit_seconds)
        layer = big.layer
    image = resolve_image(store, f"bench-{case}")
    idx = [str(d.digest) for d in image.manifest.layers].index(str(layer))
    chain = str(chain_ids(image.config.diff_ids)[idx])
    snap_dir = default_snapshotter(store.subdir("snapshots")).path(chain)
    out = tools.state / "tar-check.tar.gz"
    cmd = ["sh", "-c", f"tar --numeric-owner -cf - -C '{snap_dir}' . | '{PY}' -m isal.igzip -1 -c > '{out}' "
                       f"&& sync '{out}'"]
    tar_times = [timed(cmd) for _ in range(runs)]
    size = sum(f.stat().st_size for f in snap_dir.rglob("*") if f.is_file() and not f.is_symlink())
    return {"pybuild_commit": median(commits), "tar_isal": median(tar_times), "bytes": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="small,layers,bigcopy")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--state", default="/tmp/pybuild-build-bench")
    ap.add_argument("--keep", action="store_true", help="keep stores between invocations")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (buildah --isolation oci and pybuild's sandbox)")
    state = Path(args.state)
    if not args.keep and state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True, exist_ok=True)
    cases = [c for c in args.cases.split(",") if c]
    tools = Tools(state)
    tools.setup()
    ctxs = contexts(state, cases)
    results: dict[str, object] = {"runs": args.runs, "cases": {}}
    rows = ["| case | metric | pybuild s | buildah s | ratio | target | ok |",
            "|---|---|---|---|---|---|---|"]
    for case in cases:
        ctx, mutate = ctxs[case]
        print(f"{case}: measuring ({args.runs} runs per metric)", file=sys.stderr)
        r = bench_case(tools, case, ctx, mutate, args.runs)
        results["cases"][case] = r  # type: ignore[index]
        for metric, target in METRICS.items():
            p, b = r[metric]["pybuild"], r[metric]["buildah"]
            ratio = p / b if b else float("nan")
            rows.append(f"| {case} | {metric} | {p:.3f} | {b:.3f} | {ratio:.2f}x | <= {target}x | "
                        f"{'yes' if ratio <= target else 'NO'} |")
    commit_rows = ["", "| case | layer bytes | pybuild commit s | tar + isal gzip -1 s | ratio | target |",
                   "|---|---|---|---|---|---|"]
    for case in cases:
        ctx, _ = ctxs[case]
        c = commit_check(tools, case, ctx, max(3, args.runs // 2))
        if c is None:
            continue
        results.setdefault("commit", {})[case] = c  # type: ignore[union-attr,index]
        ratio = c["pybuild_commit"] / c["tar_isal"]
        commit_rows.append(f"| {case} | {int(c['bytes'])} | {c['pybuild_commit']:.3f} | "
                           f"{c['tar_isal']:.3f} | {ratio:.2f}x | <= 2x |")
    table = "\n".join(rows + commit_rows)
    print(table)
    (state / "results.md").write_text(table + "\n")
    (state / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
