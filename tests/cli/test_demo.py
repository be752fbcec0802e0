"""scripts/demo.sh (the README's main job) runs end to end and is idempotent."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.support.images import have_busybox

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_twice_with_the_same_digest(tmp_path: Path) -> None:
    if not (REPO_ROOT / ".venv" / "bin" / "pybuild").exists():
        skip_or_fail("no .venv/bin/pybuild: run scripts/setup.sh")
    if not have_busybox():
        skip_or_fail("busybox-static not installed")
    env = {**os.environ, "SKIP_SETUP": "1", "PYBUILD_ROOT": str(tmp_path / "store"),
           "WORK": str(tmp_path / "work")}
    env.pop("SOURCE_DATE_EPOCH", None)
    outs = []
    for _ in range(2):
        proc = subprocess.run([str(REPO_ROOT / "scripts" / "demo.sh")], env=env, capture_output=True,
                              text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        outs.append(proc.stdout)
    for out in outs:
        assert re.search(r"^busybox\s+latest\s+[0-9a-f]{12}\s", out, re.M)
        assert "IMAGE          CREATED" in out and "Loaded image: busybox:latest" in out
    kept = [re.search(r"round trip kept the image ID and manifest digest: (.*)", o) for o in outs]
    assert kept[0] and kept[1]
    assert kept[0].group(1) == kept[1].group(1), "\n=== run 1 ===\n" + outs[0] + "\n=== run 2 ===\n" + outs[1]
