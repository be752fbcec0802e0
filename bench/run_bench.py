#!/usr/bin/env python3
"""Container start latency: `pybuild run --rm busybox true` against `podman run --rm busybox
true`, interleaved (A B A B ...) in the same run, medians quoted (bench/RESULTS convention).

Both tools get the same offline busybox image (tests/support/images.py, deterministic): pybuild
in a fresh store, podman in a private storage root (--root/--runroot under the work dir, filled
with skopeo from pybuild's OCI layout), so neither the host's podman storage nor the registry
is touched. The image is unpacked before timing (one warm-up run each). The peer baseline in
../shared/bench/RESULTS.md used `--network none`; that is the default case here, and
`--network default` adds each tool's default network (bridge) as a second case.

pybuild's modules are byte-compiled first (what `pip install` does; a checkout run with
PYTHONDONTWRITEBYTECODE=1, as this machine's shells are, would otherwise recompile ~40 modules
on every start, ~15 ms that no installed pybuild pays); --no-compile skips that.

usage: .venv/bin/python bench/run_bench.py [-n 21] [--warmup 2] [--network none|default|both]
                                           [--keep] [--json FILE] [--no-compile]
Needs root, podman + runc + skopeo (Debian: podman, skopeo), busybox-static.
"""

from __future__ import annotations

import argparse
import json
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


def timed(cmd: list[str]) -> tuple[float, int]:
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True)
    _, err = p.communicate()
    dt = time.monotonic() - t0
    if p.returncode != 0:
        sys.stderr.write(f"run_bench: {' '.join(cmd)} exited {p.returncode}: {err.decode()[-400:]}\n")
    return dt, p.returncode


def setup(work: Path) -> tuple[Path, list[str]]:
    from registry.store import DirStore
    from tests.support.images import BUSYBOX_REF, build_busybox

    store = work / "pybuild-store"
    build_busybox(DirStore(store))
    proot, prun = work / "podman-root", work / "podman-run"
    podman = ["podman", "--root", str(proot), "--runroot", str(prun)]
    dest = f"containers-storage:[overlay@{proot}+{prun}]{BUSYBOX_REF}"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{store}:{BUSYBOX_REF}", dest], check=True)
    return store, podman


def main() -> int:
    ap = argparse.ArgumentParser(usage=__doc__)
    ap.add_argument("-n", type=int, default=21)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--network", choices=("none", "default", "both"), default="both")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", help="also write the figures as JSON")
    ap.add_argument("--no-compile", action="store_true",
                    help="do not byte-compile pybuild's packages before timing")
    a = ap.parse_args()
    for tool in ("podman", "skopeo"):
        if shutil.which(tool) is None:
            sys.stderr.write(f"run_bench: {tool} not found\n")
            return 2
    pybuild_exe = str(Path(sys.executable).with_name("pybuild"))
    if not a.no_compile:
        import compileall

        for pkg in ("builder", "registry", "runtime", "grammar"):
            compileall.compile_dir(str(REPO / pkg), quiet=1)
    work = Path(tempfile.mkdtemp(prefix="pybuild-runbench-"))
    results = []
    load_start = os.getloadavg()[0]
    try:
        store, podman = setup(work)
        cases = {"none": ["--network", "none"], "default": []}
        for case in (("none", "default") if a.network == "both" else (a.network,)):
            net = cases[case]
            mine = [pybuild_exe, "--root", str(store), "run", "--rm", *net, "busybox", "true"]
            peer = [*podman, "run", "--rm", *net, "busybox", "true"]
            for _ in range(a.warmup):
                timed(mine)
                timed(peer)
            tm, tp = [], []
            for _ in range(a.n):                       # interleaved: A B A B ...
                tm.append(timed(mine)[0])
                tp.append(timed(peer)[0])
            row = {"case": f"run --rm {' '.join(net) + ' ' if net else ''}busybox true",
                   "pybuild": [min(tm), statistics.median(tm), max(tm)],
                   "podman": [min(tp), statistics.median(tp), max(tp)],
                   "ratio": statistics.median(tm) / statistics.median(tp), "runs": a.n,
                   "load": os.getloadavg()[0]}
            results.append(row)
        print(f"container start, wall seconds: median (min-max), {a.n} interleaved runs after "
              f"{a.warmup} warm-up; load average {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end")
        print(f"{'case':42s} {'pybuild':>24s} {'podman':>24s} {'ratio':>6s}")
        for r in results:
            p, q = r["pybuild"], r["podman"]
            print(f"{r['case']:42s} {p[1]:7.3f} ({p[0]:.3f}-{p[2]:.3f}) {q[1]:7.3f} ({q[0]:.3f}-{q[2]:.3f})"
                  f" {r['ratio']:6.2f}")
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=1))
    finally:
        if (work / "pybuild-store" / "networks").is_dir():
            from runtime.network import NetworkStore

            # the last bridge run's network teardown runs on in the background: let it finish
            NetworkStore(work / "pybuild-store" / "networks").settle()
        if not a.keep:
            subprocess.run([*podman, "rm", "-af"], capture_output=True, check=False) \
                if "podman" in locals() else None
            subprocess.run([*podman, "rmi", "-af"], capture_output=True, check=False) \
                if "podman" in locals() else None
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
