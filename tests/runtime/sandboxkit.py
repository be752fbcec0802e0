"""Fixtures and helpers for the sandbox tests (test_sandbox*, test_nsinit*, test_cgroups*,
test_run*): a busybox image unpacked once per session into committed overlay snapshots, a
fresh active snapshot per test, a runner that captures a container's output, and a leak check
asserting that no mount and no cgroup outlives a test.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from registry.image import resolve_image
from registry.model import ContainerConfig
from runtime import rootfs as rootfs_mod
from runtime import sandbox
from runtime import spec as S
from runtime.snapshots import OverlaySnapshotter
from tests.support.images import StoredImage

CONFIG = ContainerConfig(env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
                         cmd=("sh",))


# -- leak check ----------------------------------------------------------------------------------
def _cgroup_dirs() -> set[str]:
    """pybuild-* cgroups that belong to this test process: the container cgroups nested under
    our own memory cgroup (every child we start inherits it), and any cgroup whose name carries
    our pid (the v2 and runc tests name theirs so). Other processes on this machine run
    containers too, so the hierarchy roots as a whole cannot be compared."""
    out: set[str] = set()
    base = Path("/sys/fs/cgroup")
    if not base.is_dir():
        return out
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctls, path = line.split(":", 2)
        for c in (ctls.split(",") if ctls else [""]):
            own[c] = path
    mine = str(os.getpid())
    for hier in [base, *[p for p in base.iterdir() if p.is_dir()]]:
        for parent in {hier, hier / own.get(hier.name, "/").lstrip("/")}:
            try:
                entries = list(parent.iterdir())
            except OSError:
                continue
            for entry in entries:
                if not entry.name.startswith("pybuild-") or not entry.is_dir():
                    continue
                nested = hier.name == "memory" and parent != hier
                if nested or mine in entry.name:
                    out.add(str(entry))
    return out


def _mounts(base: Path | str = "/tmp/") -> list[str]:
    """Host mounts that involve ``base`` (as mount point, source or overlay layer). Other
    processes on this machine mount things too (network namespaces, other test runs), so
    only our own paths are compared."""
    needle = str(base)
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if needle in line]


@pytest.fixture
def no_leaks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fails the test if a mount or a pybuild cgroup appeared and stayed."""
    base = tmp_path_factory.getbasetemp()
    mounts, cgroups = _mounts(base), _cgroup_dirs()
    yield
    assert _mounts(base) == mounts, "mounts leaked into the host's mount table"
    left = _cgroup_dirs() - cgroups
    assert not left, f"cgroups left behind: {sorted(left)}"


# -- rootfs --------------------------------------------------------------------------------------
@dataclass
class Rootfs:
    snapshotter: OverlaySnapshotter
    key: str
    mounts: list[Any]
    target: Path           # the empty mount point (spec root.path)
    state: Path            # where hosts/hostname/resolv.conf live

    @property
    def upper(self) -> Path:
        return self.snapshotter.upper_dir(self.key)


@pytest.fixture(scope="session")
def busybox_chain(busybox_image: StoredImage, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[OverlaySnapshotter, Any]:
    """The busybox image unpacked once per session into committed snapshots."""
    if os.geteuid() != 0:
        pytest.skip("the sandbox tests run as root (the rootless ones start their own user)")
    root = tmp_path_factory.mktemp("snapshots")
    sn = OverlaySnapshotter(root)
    img = resolve_image(busybox_image.store, busybox_image.ref)
    top = rootfs_mod.ensure_chain(busybox_image.store, sn, img.manifest)
    return sn, top


@pytest.fixture
def rootfs(busybox_chain: tuple[OverlaySnapshotter, Any], tmp_path: Path) -> Iterator[Rootfs]:
    sn, top = busybox_chain
    key = f"test-{os.getpid()}-{tmp_path.name}"
    mounts = sn.prepare(key, top)
    target = tmp_path / "rootfs"
    target.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    for name, text in (("hosts", S.hosts_file("probe")), ("hostname", "probe\n"),
                       ("resolv.conf", "nameserver 192.0.2.53\n")):
        (state / name).write_text(text)
    yield Rootfs(sn, key, mounts, target, state)
    sn.remove(key)


# -- running ---------------------------------------------------------------------------------------
@dataclass
class Result:
    status: sandbox.ExitStatus
    out: str
    err: str
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def code(self) -> int:
        return self.status.exit_code

    def values(self) -> dict[str, str]:
        """``key=value`` lines of the output."""
        out = {}
        for line in self.out.splitlines():
            k, sep, v = line.partition("=")
            if sep:
                out[k.strip()] = v.strip()
        return out


def make_spec(rootfs: Rootfs, argv: list[str], **opts: Any) -> dict[str, Any]:
    options = S.RunOptions(args=tuple(argv), hostname=opts.pop("hostname", "probe"), **opts)
    return S.build_spec(CONFIG, options, root_path=str(rootfs.target), state_dir=str(rootfs.state),
                        container_id="c" * 64)


def run_in(rootfs: Rootfs, argv: list[str], *, spec: dict[str, Any] | None = None,
           stdin: bytes | None = None, **opts: Any) -> Result:
    spec = spec or make_spec(rootfs, argv, **opts)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        inp: Any = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
        if stdin is not None:
            inp.write(stdin)
            inp.seek(0)
        try:
            status = sandbox.run(spec, rootfs_mounts=rootfs.mounts, stdio=(inp, out, err),
                                 forward_signals=False)
        finally:
            inp.close()
        out.seek(0)
        err.seek(0)
        return Result(status, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                      spec)
