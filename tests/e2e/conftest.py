"""e2e fixtures: docker.io mirrored to the session's local registry (FROM busybox works offline),
and a helper that runs the pybuild CLI as a real process (container output goes to its stdout)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "Dockerfile.examples"


@pytest.fixture(scope="session")
def docker_io_mirror(registry_url: str, busybox_in_registry: str,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """PYBUILD_REGISTRIES_CONF: docker.io pulls go to the local registry (plain http)."""
    del busybox_in_registry  # pushed as <registry>/library/busybox:latest
    conf = tmp_path_factory.mktemp("regconf") / "registries.toml"
    conf.write_text(f'insecure_registries = ["{registry_url}"]\n\n'
                    '[[registry]]\nlocation = "docker.io"\n\n'
                    f'[[registry.mirror]]\nlocation = "{registry_url}"\ninsecure = true\n')
    old = os.environ.get("PYBUILD_REGISTRIES_CONF")
    os.environ["PYBUILD_REGISTRIES_CONF"] = str(conf)
    try:
        yield registry_url
    finally:
        if old is None:
            os.environ.pop("PYBUILD_REGISTRIES_CONF", None)
        else:
            os.environ["PYBUILD_REGISTRIES_CONF"] = old


def pybuild(root: Path, *args: str, cwd: Path | None = None, timeout: float = 180,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`pybuild --root ROOT ARGS...` as a child process (text output captured)."""
    return subprocess.run([sys.executable, "-m", "builder", "--root", str(root), *args],
                          capture_output=True, text=True, cwd=cwd or REPO_ROOT, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)
