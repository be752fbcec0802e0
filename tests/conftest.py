"""Shared test configuration: capability probes, markers that skip (or fail under CI=true)
with a printed reason, and the fixture plugins in tests/support/.

Markers: needs_root, needs_userns, needs_overlay, needs_registry, needs_peer(name, ...), slow.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTDATA = REPO_ROOT / "testdata"

pytest_plugins = [
    "tests.support.stores",
    "tests.support.registry_server",
    "tests.support.images",
]


def skip_or_fail(reason: str) -> None:
    """Skip with a reason; under CI=true a missing capability is a failure, not a skip."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI requires this capability: {reason}")
    pytest.skip(reason)


@functools.cache
def is_root() -> bool:
    return os.geteuid() == 0


@functools.cache
def have_userns() -> bool:
    if not shutil.which("unshare"):
        return False
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "true"],
                          capture_output=True, timeout=10, check=False)
    return proc.returncode == 0


@functools.cache
def have_overlay() -> bool:
    if not is_root():
        return False
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for d in ("lower", "upper", "work", "merged"):
            (base / d).mkdir()
        opts = f"lowerdir={base}/lower,upperdir={base}/upper,workdir={base}/work"
        proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(base / "merged")],
                              capture_output=True, check=False)
        if proc.returncode != 0:
            return False
        subprocess.run(["umount", str(base / "merged")], check=False)
    return True


_PROBES = {
    "needs_root": (is_root, "needs root (uid 0)"),
    "needs_userns": (have_userns, "unprivileged user namespaces unavailable (`unshare --user` failed)"),
    "needs_overlay": (have_overlay, "overlayfs cannot be mounted here (needs root and the overlay module)"),
    "needs_registry": (lambda: shutil.which("docker-registry") is not None,
                       "docker-registry not installed (apt-get install docker-registry)"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    for item in items:
        for name in _PROBES:
            if item.get_closest_marker(name) is not None:
                item.add_marker(pytest.mark.usefixtures(f"_probe_{name}"))
        if item.get_closest_marker("needs_peer") is not None:
            item.add_marker(pytest.mark.usefixtures("_probe_needs_peer"))


def _make_probe(name: str) -> object:
    probe, reason = _PROBES[name]

    @pytest.fixture
    def _fixture() -> None:
        if not probe():
            skip_or_fail(reason)

    _fixture.__name__ = f"_probe_{name}"
    return _fixture


for _name in _PROBES:
    globals()[f"_probe_{_name}"] = _make_probe(_name)


@pytest.fixture
def _probe_needs_peer(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("needs_peer")
    assert marker is not None
    for tool in marker.args:
        if shutil.which(tool) is None:
            skip_or_fail(f"peer tool {tool!r} not installed (see .ci/run for the apt packages)")


@pytest.fixture
def tmp_root(tmp_path: Path) -> Iterator[Path]:
    """A fresh, empty PYBUILD_ROOT for one test."""
    root = tmp_path / "store"
    yield root
