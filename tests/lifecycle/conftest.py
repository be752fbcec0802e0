"""Fixtures for the container lifecycle tests: a tmp store root, containers run by the
monitor with the plain-process launcher (no sandbox needed), network namespaces made with
`ip netns add`, and network stores whose bridges and rules are removed even on failure."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runtime.containers import Container, ContainerRecord, ContainerStore
from runtime.network import NetworkStore

SUFFIX = f"{os.getpid() % 100000}"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "store"
    r.mkdir()
    return r


@pytest.fixture
def make_container(root: Path) -> Iterator[Callable[..., Container]]:
    """Create a container record whose process is a plain host process (launcher "process")."""
    made: list[Container] = []
    cs = ContainerStore(root / "containers")

    def make(argv: list[str], **kw: object) -> Container:
        run = dict(kw.pop("run", {}) or {})  # type: ignore[call-overload]
        run.setdefault("launcher", "process")
        rec = ContainerRecord(id=cs.new_id(), name=str(kw.pop("name", "")), image="test",
                              argv=tuple(argv), env=("PATH=/usr/sbin:/usr/bin:/sbin:/bin",),
                              run=run, **kw)  # type: ignore[arg-type]
        c = cs.create(rec)
        made.append(c)
        return c

    yield make
    from runtime.lifecycle import remove_container

    for c in made:
        if not c.dir.exists():
            continue
        try:
            remove_container(root, c, force=True)
        except Exception:  # noqa: BLE001 - best-effort cleanup of what the test left
            st = c.raw_state()
            for pid in (st.pid, st.monitor_pid):
                if pid:
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass


@pytest.fixture
def netns() -> Iterator[Callable[[str], str]]:
    """`netns("a")` creates network namespace pbt<pid>a and returns its path."""
    made: list[str] = []

    def make(tag: str) -> str:
        name = f"pbt{SUFFIX}{tag}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        made.append(name)
        return f"/run/netns/{name}"

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def netstore(root: Path) -> Iterator[NetworkStore]:
    """A network store for this test; every network it made is torn down afterwards."""
    ns = NetworkStore(root / "networks", default_bridge=f"pbt{SUFFIX}b")
    yield ns
    for net in ns.list_all():
        try:
            ns.remove(net.id, force=True)
        except Exception:  # noqa: BLE001
            subprocess.run(["ip", "link", "del", net.bridge], check=False, capture_output=True)


def snapshot_host() -> dict[str, list[str]]:
    """What any pybuild container could leave on the host: links, nft tables, iptables rules,
    mounts, monitor/sandbox processes, pybuild cgroups. (Global: other pybuild processes on the
    machine show up too; `traces` below narrows it to one store's objects.)"""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    nft = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    ipt = ""
    for table in ("nat", "filter"):
        ipt += subprocess.run(["iptables", "-w", "5", "-t", table, "-S"], capture_output=True,
                              text=True).stdout
    mounts = Path("/proc/self/mountinfo").read_text()
    procs = []
    for e in os.scandir("/proc"):
        if e.name.isdigit():
            try:
                cmd = Path(e.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "runtime.monitor" in cmd or "runtime.nsinit" in cmd:
                procs.append(f"{e.name} {cmd}")
    cgroups = []
    for base in Path("/sys/fs/cgroup").iterdir():
        if base.is_dir():
            cgroups += [str(p) for p in base.rglob("pybuild*") if p.is_dir()]
    return {
        "links": sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines()),
        "nft": sorted(line for line in nft.splitlines() if "pybuild" in line),
        "iptables": sorted(line for line in ipt.splitlines() if "pybuild" in line.lower()),
        "mounts": sorted(line.split()[4] for line in mounts.splitlines()),
        "procs": sorted(procs),
        "cgroups": sorted(cgroups),
    }


def traces(root: Path, cids: list[str], nets: list[str], bridges: list[str],
           pids: list[tuple[int, int | None]]) -> dict[str, list[str]]:
    """Everything on the host that belongs to these containers/networks of store ``root``:
    veths and bridges, nft tables, iptables rules, mounts, cgroups, live processes."""
    from runtime.containers import is_alive

    host = snapshot_host()
    short = [c[:12] for c in cids] + [n[:12] for n in nets]
    out = {
        "links": [x for x in host["links"] if x in bridges or any(x == f"pbv{c[:12]}" for c in cids)],
        "nft": [x for x in host["nft"] if any(s in x for s in short)],
        "iptables": [x for x in host["iptables"] if any(s in x for s in short)],
        "mounts": [x for x in host["mounts"] if str(root) in x or any(c in x for c in cids)],
        "cgroups": [x for x in host["cgroups"] if any(c in x for c in cids)],
        "procs": [f"{pid}" for pid, start in pids if pid and is_alive(pid, start)],
    }
    out["procs"] += [x for x in host["procs"] if str(root) in x]
    return out
