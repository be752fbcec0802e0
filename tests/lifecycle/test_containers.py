"""The container state store: IDs, names, prefix lookup, atomic state, liveness."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.containers import (
    AmbiguousContainer,
    ContainerNotFound,
    ContainerRecord,
    ContainerStore,
    InvalidName,
    NameInUse,
    PortMapping,
    is_alive,
    parse_rfc3339,
    process_start_time,
    rfc3339_nano,
)


def _rec(cs: ContainerStore, name: str = "", cid: str | None = None) -> ContainerRecord:
    return ContainerRecord(id=cid or cs.new_id(), name=name, image="busybox", argv=("sh",))


def test_ids_are_64_hex_and_unique(tmp_path: Path) -> None:
    cs = ContainerStore(tmp_path)
    ids = {cs.new_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 64 and int(i, 16) >= 0 for i in ids)


def test_lookup_by_id_name_and_unique_prefix(tmp_path: Path) -> None:
    cs = ContainerStore(tmp_path)
    a = cs.create(_rec(cs, "web", "ab" + "0" * 62))
    b = cs.create(_rec(cs, "db", "ac" + "1" * 62))
    assert cs.get(a.id).id == a.id
    assert cs.get("web").id == a.id
    assert cs.get("ab").id == a.id
    assert cs.get("ac1").id == b.id
    with pytest.raises(AmbiguousContainer):
        cs.get("a")
    with pytest.raises(ContainerNotFound):
        cs.get("nope")
    with pytest.raises(ContainerNotFound):
        cs.get("ff")


def test_names_are_unique_and_validated(tmp_path: Path) -> None:
    cs = ContainerStore(tmp_path)
    cs.create(_rec(cs, "web"))
    with pytest.raises(NameInUse) as exc:
        cs.create(_rec(cs, "web"))
    assert exc.value.exit_code == 125
    with pytest.raises(InvalidName):
        cs.create(_rec(cs, "-bad"))
    with pytest.raises(InvalidName):
        cs.create(_rec(cs, "a/b"))
    # the failed create left no directory behind
    assert len(cs.ids()) == 1


def test_concurrent_creates_with_one_name_yield_one_winner(tmp_path: Path) -> None:
    cs = ContainerStore(tmp_path)
    results: list[str] = []

    def attempt() -> None:
        try:
            cs.create(_rec(cs, "race"))
            results.append("ok")
        except NameInUse:
            results.append("taken")

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 1 and results.count("taken") == 7
    assert len(cs.ids()) == 1


def test_random_names_and_removal_frees_the_name(tmp_path: Path) -> None:
    cs = ContainerStore(tmp_path)
    c = cs.create(_rec(cs))
    assert "_" in c.name
    cs.remove(c)
    assert cs.ids() == []
    cs.create(_rec(cs, c.name))   # the name is free again


def test_record_round_trips(tmp_path: Path) -> None:
    cs = ContainerStore(tmp_path)
    rec = ContainerRecord(id=cs.new_id(), name="x", image="busybox", argv=("httpd", "-f"),
                          ports=(PortMapping(80, 8080, "tcp", "127.0.0.1"),), restart="on-failure:3",
                          labels={"a": "b"}, resources={"memory": 100 << 20})
    c = cs.create(rec)
    again = ContainerStore(tmp_path).get("x").record
    assert again == c.record
    assert again.restart_policy() == ("on-failure", 3)


def test_update_state_is_atomic_under_concurrency(tmp_path: Path) -> None:
    cs = ContainerStore(tmp_path)
    c = cs.create(_rec(cs, "counter"))

    def bump() -> None:
        for _ in range(50):
            c.update_state(lambda st: st.__class__(**{**st.to_dict(), "restart_count": st.restart_count + 1}))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.raw_state().restart_count == 200


def test_dead_monitor_reads_as_exited_never_running(tmp_path: Path) -> None:
    cs = ContainerStore(tmp_path)
    c = cs.create(_rec(cs, "ghost"))
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        c.update_state(status="running", pid=proc.pid, pid_start=process_start_time(proc.pid),
                       monitor_pid=proc.pid, monitor_start=process_start_time(proc.pid),
                       started_at=rfc3339_nano())
        assert c.state().status == "running"
    finally:
        proc.kill()
        proc.wait()
    st = c.state()
    assert st.status == "exited"
    assert st.pid == 0
    assert "monitor" in st.error


def test_recycled_pid_is_not_mistaken_for_the_monitor(tmp_path: Path) -> None:
    cs = ContainerStore(tmp_path)
    c = cs.create(_rec(cs, "recycled"))
    me = os.getpid()
    # our own pid, but with a different start time: a pid reused by another process
    c.update_state(status="running", pid=me, pid_start=1, monitor_pid=me, monitor_start=1)
    assert not is_alive(me, 1)
    assert c.state().status == "exited"


def test_rfc3339_round_trip() -> None:
    ns = 1_700_000_000_123_456_789
    text = rfc3339_nano(ns)
    assert text == "2023-11-14T22:13:20.123456789Z"
    assert abs((parse_rfc3339(text) or 0) - ns / 1e9) < 1e-6
    assert parse_rfc3339("0001-01-01T00:00:00Z") is None
    assert abs((parse_rfc3339("2023-11-14T23:13:20+01:00") or 0) - 1_700_000_000) < 1e-6
    assert time.time() - (parse_rfc3339(rfc3339_nano()) or 0) < 5


def test_a_corrupt_record_is_skipped_by_listings(tmp_path: Path) -> None:
    cs = ContainerStore(tmp_path)
    good = cs.create(_rec(cs, "good"))
    bad = cs.create(_rec(cs, "bad"))
    (bad.dir / "container.json").write_text("{not json")
    assert [c.id for c in ContainerStore(tmp_path).list_all()] == [good.id]
