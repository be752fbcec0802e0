"""The container, network and volume verbs through the CLI (in-process), on containers the
monitor runs with the plain-process launcher."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime import lifecycle as L
from runtime.containers import Container
from runtime.monitor import spawn
from tests.lifecycle.conftest import SUFFIX
from tests.support.stores import run_cli


def test_ps_columns_and_states(root: Path, make_container: Callable[..., Container]) -> None:
    up = make_container(["sleep", "30"], name="up")
    done = make_container(["sh", "-c", "exit 2"], name="done")
    make_container(["true"], name="fresh")
    spawn(root, up)
    spawn(root, done)
    L.wait_stopped(done, 10)
    out = run_cli(["ps"], root=root).stdout.splitlines()
    assert re.split(r"\s{2,}", out[0]) == ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS",
                                          "NAMES"]
    assert len(out) == 2 and out[1].startswith(up.short_id)
    assert re.search(r"Up (Less than a second|\d+ seconds?)", out[1])
    every = run_cli(["ps", "-a"], root=root).stdout
    assert re.search(r"Exited \(2\) (Less than a second|\d+ seconds?) ago\s+done", every)
    assert re.search(r"Created\s+fresh", every)
    assert run_cli(["ps", "-q"], root=root).stdout == up.short_id + "\n"
    assert run_cli(["ps", "-aq", "--no-trunc", "-f", "status=exited"], root=root).stdout == done.id + "\n"
    listing = run_cli(["ps", "-a", "--format", "json"], root=root).stdout
    rows = [json.loads(line) for line in listing.splitlines()]
    assert {r["Names"]: r["State"] for r in rows} == {"up": "running", "done": "exited", "fresh": "created"}
    fmt = run_cli(["ps", "-a", "--format", "{{.Names}}:{{.State}}", "-f", "name=^up$"], root=root)
    assert fmt.stdout == "up:running\n"
    assert run_cli(["container", "ls", "-q"], root=root).stdout == up.short_id + "\n"


def test_logs_flags(root: Path, make_container: Callable[..., Container]) -> None:
    c = make_container(["sh", "-c", "echo one; echo two >&2; echo three"], name="chatty")
    spawn(root, c)
    L.wait_stopped(c, 10)
    time.sleep(0.05)
    r = run_cli(["logs", "chatty"], root=root)
    assert (r.stdout, r.stderr) == ("one\nthree\n", "two\n")
    from runtime.monitor import read_log

    last = list(read_log(c.log_path))[-1].log
    t = run_cli(["logs", "--tail", "1", "chatty"], root=root)
    assert t.stdout + t.stderr == last
    ts = run_cli(["logs", "-t", c.short_id], root=root).stdout.splitlines()
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z one$", ts[0])
    assert run_cli(["logs", "--since", "1h", "chatty"], root=root).stdout == "one\nthree\n"
    assert run_cli(["logs", "--since", str(int(time.time()) + 60), "chatty"], root=root).stdout == ""
    assert run_cli(["logs", "nope"], root=root).code == 1


def test_stop_start_rm_kill_wait_inspect(root: Path, make_container: Callable[..., Container]) -> None:
    c = make_container(["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"], name="svc")
    r = run_cli(["start", "svc"], root=root)
    assert (r.code, r.stdout) == (0, "svc\n")
    view = json.loads(run_cli(["container", "inspect", "svc"], root=root).stdout)[0]
    assert view["State"]["Status"] == "running" and view["State"]["Pid"] > 0
    assert view["Id"] == c.id and view["Name"] == "/svc"
    assert run_cli(["container", "inspect", "-f", "{{.State.Running}}", "svc"], root=root).stdout == "true\n"
    t0 = time.monotonic()
    assert run_cli(["stop", "-t", "1", "svc"], root=root).stdout == "svc\n"
    assert time.monotonic() - t0 < 4
    view = json.loads(run_cli(["container", "inspect", "svc"], root=root).stdout)[0]
    assert view["State"]["Status"] == "exited" and view["State"]["ExitCode"] == 137
    assert view["State"]["FinishedAt"] > view["State"]["StartedAt"]
    assert run_cli(["wait", "svc"], root=root).stdout == "137\n"
    k = run_cli(["kill", "svc"], root=root)
    assert k.code == 1 and "not running" in k.stderr
    run_cli(["start", "svc"], root=root)
    busy = run_cli(["rm", "svc"], root=root)
    assert busy.code == 1 and "stop it first" in busy.stderr
    multi = run_cli(["rm", "-f", "svc", "ghost"], root=root)
    assert multi.code == 1 and multi.stdout == "svc\n" and "no such container: ghost" in multi.stderr
    assert not c.dir.exists()


def test_container_prune_removes_only_stopped(root: Path, make_container: Callable[..., Container]) -> None:
    up = make_container(["sleep", "30"], name="keep")
    gone = make_container(["true"], name="gone")
    spawn(root, up)
    spawn(root, gone)
    L.wait_stopped(gone, 10)
    L.wait_monitor_gone(gone)
    r = run_cli(["container", "prune", "-f"], root=root)
    assert gone.id in r.stdout and up.id not in r.stdout
    assert run_cli(["ps", "-aq"], root=root).stdout == up.short_id + "\n"


def test_top_lists_the_container_processes(root: Path, make_container: Callable[..., Container]) -> None:
    c = make_container(["sleep", "30"], name="topme")
    pid = spawn(root, c)
    # the process launcher shares our PID namespace: top lists the container's process tree
    # only, never the host's other processes
    out = run_cli(["top", "topme"], root=root).stdout.splitlines()
    assert out[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert len(out) == 2 and out[1].split()[1] == str(pid) and "sleep 30" in out[1]


@pytest.mark.needs_root
def test_network_cli(root: Path) -> None:
    name = f"cli{SUFFIX}"
    r = run_cli(["network", "create", "--subnet", "10.213.0.0/24", name], root=root)
    try:
        assert r.code == 0 and len(r.stdout.strip()) == 64
        ls = run_cli(["network", "ls"], root=root).stdout.splitlines()
        assert ls[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
        assert {line.split()[1] for line in ls[1:]} >= {name, "bridge", "host", "none"}
        view = json.loads(run_cli(["network", "inspect", name], root=root).stdout)[0]
        assert view["IPAM"]["Config"] == [{"Subnet": "10.213.0.0/24", "Gateway": "10.213.0.1"}]
        assert run_cli(["network", "inspect", "-f", "{{.Driver}}", name], root=root).stdout == "bridge\n"
        dup = run_cli(["network", "create", name], root=root)
        assert dup.code != 0 and "already exists" in dup.stderr
        assert run_cli(["network", "rm", "bridge"], root=root).code == 1
    finally:
        assert run_cli(["network", "rm", name], root=root).stdout == f"{name}\n"
    assert run_cli(["network", "inspect", name], root=root).code == 1


def test_top_level_inspect_finds_containers_first(root: Path,
                                                  make_container: Callable[..., Container]) -> None:
    c = make_container(["true"], name="insp")
    r = run_cli(["inspect", "insp"], root=root)
    assert r.code == 0 and json.loads(r.stdout)[0]["Id"] == c.id
    assert run_cli(["inspect", "-f", "{{.State.Status}}", c.short_id], root=root).stdout == "created\n"
    assert run_cli(["inspect", "--type", "container", "nothing"], root=root).code == 1
    assert run_cli(["inspect", "--type", "image", "insp"], root=root).code == 1
