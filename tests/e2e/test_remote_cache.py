"""--cache-to a registry, then --cache-from into an empty store (another "machine"): no step
runs, and the image is the same. The cache is a plain OCI manifest the registry stores."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from builder.records import Records
from registry.store import DirStore
from tests.builder.helpers import write_tree
from tests.e2e.conftest import pybuild

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_registry]

DOCKERFILE = """\
FROM busybox
WORKDIR /app
COPY . .
RUN sha256sum data.txt > data.sum
RUN echo built > /app/BUILT
CMD ["cat", "/app/data.sum"]
"""


@pytest.mark.parametrize("mode", ["min", "max"])
def test_cache_to_then_cache_from_runs_nothing(tmp_path: Path, docker_io_mirror: str, mode: str) -> None:
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": DOCKERFILE, "data.txt": "payload\n"})
    cache_ref = f"{docker_io_mirror}/cache/app:{mode}"
    first = pybuild(tmp_path / "machine-a", "build", "--progress", "plain",
                    "--cache-to", f"type=registry,ref={cache_ref},mode={mode}", str(ctx))
    assert first.returncode == 0, first.stderr
    image_a = first.stdout.strip()

    req = urllib.request.Request(f"http://{docker_io_mirror}/v2/cache/app/manifests/{mode}",
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        manifest = json.loads(resp.read())
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.pybuild.cache.config.v1+json"
    assert len(manifest["layers"]) == 4      # WORKDIR, COPY, 2x RUN

    second = pybuild(tmp_path / "machine-b", "build", "--progress", "plain",
                     "--cache-from", f"type=registry,ref={cache_ref}", str(ctx))
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == image_a
    rec = Records(DirStore(tmp_path / "machine-b")).last()
    assert rec is not None
    assert [s.instruction for s in rec.steps if s.status == "RAN"] == []
    assert sum(1 for s in rec.steps if s.status == "CACHED") >= 4
    run = pybuild(tmp_path / "machine-b", "run", "--rm", image_a)
    assert run.returncode == 0, run.stderr
    assert "data.txt" in run.stdout
