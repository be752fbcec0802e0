"""The monitor with the plain-process launcher: json-file logs, exit codes, stop/kill,
restart policies, a killed monitor, --rm. Real processes, real detached monitors."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime import lifecycle as L
from runtime.containers import Container, is_alive
from runtime.monitor import LogWriter, MonitorError, read_log, spawn

TERM_IGNORING = "trap '' TERM; echo ready; while true; do sleep 0.1; done"


def _wait(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_log_writer_lines_partials_and_streams(tmp_path: Path) -> None:
    path = tmp_path / "json.log"
    w = LogWriter(path)
    w.feed("stdout", b"one\ntw")
    w.feed("stderr", b"err\n")
    w.feed("stdout", b"o\nthree")
    w.feed("stdout", b"x" * 20000 + b"\n")
    w.close()
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["log"] for e in entries[:3]] == ["one\n", "err\n", "two\n"]
    assert entries[1]["stream"] == "stderr"
    assert all(set(e) == {"log", "stream", "time"} for e in entries)
    assert all(e["time"].endswith("Z") and len(e["time"]) == 30 for e in entries)
    # a line longer than 16 KiB is split, and nothing is lost
    assert "".join(e["log"] for e in entries[3:]) == "three" + "x" * 20000 + "\n"
    assert entries[3]["log"] == ("three" + "x" * 20000)[:16384]


def test_run_detached_logs_and_exit_code(root: Path, make_container: Callable[..., Container]) -> None:
    c = make_container(["sh", "-c", "echo out; echo err >&2; exit 3"], name="short")
    pid = spawn(root, c)
    assert pid > 0
    st = L.wait_stopped(c, 10)
    assert st.status == "exited" and st.exit_code == 3
    assert st.finished_at > st.started_at
    got = [(e.stream, e.log) for e in read_log(c.log_path)]
    assert ("stdout", "out\n") in got and ("stderr", "err\n") in got
    L.wait_monitor_gone(c)
    assert c.raw_state().monitor_pid == 0


def test_missing_executable_fails_the_start_with_127(root: Path,
                                                     make_container: Callable[..., Container]) -> None:
    c = make_container(["/nonexistent/prog"], name="nope")
    with pytest.raises(MonitorError) as exc:
        spawn(root, c)
    assert exc.value.exit_code == 127
    assert c.state().status != "running"


def test_stop_escalates_to_sigkill_after_the_timeout(root: Path,
                                                     make_container: Callable[..., Container]) -> None:
    c = make_container(["sh", "-c", TERM_IGNORING], name="stubborn", stop_timeout=10)
    spawn(root, c)
    _wait(lambda: any("ready" in e.log for e in read_log(c.log_path)))
    t0 = time.monotonic()
    st = L.stop_container(c, timeout=1)
    took = time.monotonic() - t0
    assert st.status == "exited" and st.exit_code == 137
    assert 0.9 <= took < 4, took
    assert L.status_text(st).startswith("Exited (137) ")


def test_stop_signal_from_record_ends_a_cooperative_process_quickly(
        root: Path, make_container: Callable[..., Container]) -> None:
    c = make_container(["sh", "-c", "trap 'exit 0' USR1; while true; do sleep 0.05; done"],
                       name="polite", stop_signal="SIGUSR1")
    spawn(root, c)
    time.sleep(0.2)
    t0 = time.monotonic()
    st = L.stop_container(c, timeout=10)
    assert st.exit_code == 0 and time.monotonic() - t0 < 3


def test_kill_with_a_signal(root: Path, make_container: Callable[..., Container]) -> None:
    c = make_container(["sleep", "30"], name="victim")
    spawn(root, c)
    L.kill_container(c, "SIGTERM")
    st = L.wait_stopped(c, 10)
    assert st.exit_code == 128 + signal.SIGTERM


def test_restart_on_failure_respects_the_maximum(root: Path,
                                                 make_container: Callable[..., Container]) -> None:
    c = make_container(["sh", "-c", "echo run; exit 1"], name="flaky", restart="on-failure:2")
    spawn(root, c)
    L.wait_monitor_gone(c, 15)
    st = c.state()
    assert st.status == "exited" and st.exit_code == 1
    assert st.restart_count == 2
    assert sum(e.log == "run\n" for e in read_log(c.log_path)) == 3


def test_restart_always_until_stopped(root: Path, make_container: Callable[..., Container]) -> None:
    c = make_container(["sh", "-c", "echo up; sleep 0.1"], name="phoenix", restart="always")
    spawn(root, c)
    _wait(lambda: c.raw_state().restart_count >= 2, timeout=15)
    L.stop_container(c, timeout=1)
    L.wait_monitor_gone(c)
    n = c.raw_state().restart_count
    time.sleep(0.5)
    assert c.state().status == "exited"
    assert c.raw_state().restart_count == n      # a user stop is final


def test_killed_monitor_shows_exited_and_takes_the_container_along(
        root: Path, make_container: Callable[..., Container]) -> None:
    c = make_container(["sleep", "60"], name="orphan")
    pid = spawn(root, c)
    st = c.raw_state()
    os.kill(st.monitor_pid, signal.SIGKILL)
    _wait(lambda: not is_alive(st.monitor_pid, st.monitor_start))
    assert c.state().status == "exited"            # never "running" without a monitor
    row = L.ps_row(c)
    assert row["Status"].startswith("Exited")
    _wait(lambda: not is_alive(pid, st.pid_start))  # PDEATHSIG: the container died with it


def test_logs_follow_streams_until_exit(root: Path, make_container: Callable[..., Container]) -> None:
    c = make_container(["sh", "-c", "for i in 1 2 3 4 5; do echo line$i; sleep 0.1; done"], name="talker")
    spawn(root, c)
    seen: list[tuple[float, str]] = []
    t0 = time.monotonic()
    for e in read_log(c.log_path, follow=True, alive=lambda: c.state().status in ("running", "restarting")):
        seen.append((time.monotonic() - t0, e.log))
    assert [s for _, s in seen] == [f"line{i}\n" for i in range(1, 6)]
    # streamed: the first line arrived well before the last one was written
    assert seen[0][0] < seen[-1][0] - 0.2


def test_auto_remove(root: Path, make_container: Callable[..., Container]) -> None:
    c = make_container(["true"], name="ephemeral", auto_remove=True)
    spawn(root, c)
    _wait(lambda: not c.dir.exists())
    from runtime.containers import ContainerNotFound, ContainerStore

    with pytest.raises(ContainerNotFound):
        ContainerStore(root / "containers").get("ephemeral")


def test_start_reuses_the_container_and_appends_to_its_log(
        root: Path, make_container: Callable[..., Container]) -> None:
    c = make_container(["sh", "-c", "echo hello"], name="again")
    spawn(root, c)
    L.wait_stopped(c, 10)
    L.wait_monitor_gone(c)
    L.start_container(root, c)
    L.wait_stopped(c, 10)
    assert [e.log for e in read_log(c.log_path)] == ["hello\n", "hello\n"]
    assert [e.log for e in read_log(c.log_path, tail=1)] == ["hello\n"]


def test_rm_refuses_a_running_container_without_force(
        root: Path, make_container: Callable[..., Container]) -> None:
    from runtime.containers import ContainerStateError

    c = make_container(["sleep", "30"], name="busy")
    pid = spawn(root, c)
    with pytest.raises(ContainerStateError):
        L.remove_container(root, c)
    L.remove_container(root, c, force=True)
    assert not c.dir.exists()
    _wait(lambda: not is_alive(pid, None))


def test_sigterm_to_the_monitor_stops_the_container_for_good(
        root: Path, make_container: Callable[..., Container]) -> None:
    c = make_container(["sh", "-c", TERM_IGNORING], name="shutdown", restart="always", stop_timeout=1)
    spawn(root, c)
    _wait(lambda: any("ready" in e.log for e in read_log(c.log_path)))
    st = c.raw_state()
    t0 = time.monotonic()
    os.kill(st.monitor_pid, signal.SIGTERM)      # e.g. the host shutting down
    L.wait_monitor_gone(c, 10)
    assert time.monotonic() - t0 < 5
    final = c.state()
    assert final.status == "exited" and final.exit_code == 137      # stop timeout, then SIGKILL
    assert final.restart_count == 0                                  # and no restart
