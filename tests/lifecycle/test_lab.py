"""The lab everyone learns containers with, end to end on the busybox image, through the real
sandbox, the detached monitor and bridge networking: run -d -p, curl, exec, logs -f, stop -t,
ps -a, start, stats, bind mounts, rm -f; two containers reaching each other by name; and 50
run/exec/stop/rm cycles that leak nothing."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runtime.containers import ContainerStore, process_start_time
from runtime.exec import ExecOptions, exec_in_container
from runtime.network import NetworkStore
from tests.conftest import REPO_ROOT
from tests.lifecycle.conftest import SUFFIX, snapshot_host, traces
from tests.support.images import StoredImage
from tests.support.registry_server import free_loopback_port
from tests.support.stores import CliResult, run_cli

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_overlay]


@pytest.fixture
def lab(busybox_store: StoredImage, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A store with busybox; a bridge name of this session; everything removed afterwards."""
    monkeypatch.setenv("PYBUILD_BRIDGE", f"pbt{SUFFIX}l")
    root = busybox_store.store.root
    yield root
    for c in ContainerStore(root / "containers").list_all():
        run_cli(["rm", "-f", c.id], root=root)
    ns = NetworkStore(root / "networks")
    for net in ns.list_all():
        ns.remove(net.id, force=True)


def pb(root: Path, *args: str) -> CliResult:
    r = run_cli(list(args), root=root)
    return r


def pb_proc(root: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """pybuild in a subprocess (for verbs that fork or stream: exec, logs -f)."""
    return subprocess.run([sys.executable, "-m", "builder", "--root", str(root), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO_ROOT)


def curl(port: int) -> str:
    return subprocess.run(["curl", "-s", "-m", "5", f"http://127.0.0.1:{port}/"], capture_output=True,
                          text=True, timeout=20).stdout


def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_the_lab(lab: Path, tmp_path: Path) -> None:
    root = lab
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("<h1>hello from pybuild</h1>\n")
    conf = tmp_path / "app.conf"
    conf.write_text("version=1\n")
    port = free_loopback_port()

    r = pb(root, "run", "-d", "-p", f"{port}:80", "--name", "web", "--memory", "100m",
           "-v", f"{www}:/www", "-v", f"{conf}:/etc/app.conf:ro",
           "busybox", "httpd", "-f", "-v", "-p", "80", "-h", "/www")
    assert r.code == 0, r.stderr
    cid = r.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid)

    # curl on the host reaches the published port
    wait_for(lambda: "hello from pybuild" in curl(port))

    # exec: PID 1 inside, another PID on the host
    ps_inside = pb_proc(root, "exec", "web", "ps")
    assert ps_inside.returncode == 0, ps_inside.stderr
    first = next(line.split() for line in ps_inside.stdout.splitlines()[1:])
    assert first[0] == "1" and "httpd" in " ".join(first)
    view = json.loads(pb(root, "inspect", "web").stdout)[0]
    host_pid = view["State"]["Pid"]
    assert host_pid > 1 and view["State"]["Status"] == "running"
    assert view["NetworkSettings"]["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}
    assert view["HostConfig"]["Memory"] == 100 * 1024 * 1024
    assert {m["Destination"] for m in view["Mounts"]} == {"/www", "/etc/app.conf"}
    assert "httpd" in Path(f"/proc/{host_pid}/cmdline").read_text()
    # exec joins every cgroup of the container (v1: it writes "0" to each controller's tasks)
    cg = pb_proc(root, "exec", "web", "cat", "/proc/self/cgroup")
    theirs = Path(f"/proc/{host_pid}/cgroup").read_text()
    assert cg.returncode == 0 and cg.stdout == theirs and f"pybuild-{cid}" in theirs

    # logs -f streams while the container runs
    follower = subprocess.Popen([sys.executable, "-m", "builder", "--root", str(root), "logs", "-f", "web"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        curl(port)
        got = b""
        deadline = time.monotonic() + 10
        out_fd = follower.stdout.fileno() if follower.stdout is not None else -1
        while b"response:200" not in got and time.monotonic() < deadline:
            if select.select([out_fd], [], [], 0.5)[0]:
                got += os.read(out_fd, 4096)
        assert b"response:200" in got          # arrived while the container still runs
        assert follower.poll() is None
    finally:
        if follower.poll() is None:
            follower.terminate()
        follower.wait(10)
        follower.stdout.close()  # type: ignore[union-attr]

    # a file written in the container's writable layer
    assert pb_proc(root, "exec", "web", "sh", "-c", "echo persisted > /root/marker").returncode == 0

    # a bind-mounted host file edited on the host is seen inside
    conf.write_text("version=2\n")              # in place: same inode, as editors that truncate
    assert pb_proc(root, "exec", "web", "cat", "/etc/app.conf").stdout == "version=2\n"
    (www / "index.html").write_text("<h1>edited on the host</h1>\n")
    assert "edited on the host" in curl(port)

    # stats shows the memory limit
    stats = pb(root, "stats", "--no-stream", "web").stdout
    assert re.search(r"/ 100MiB", stats), stats

    # stop -t 2: httpd as PID 1 has no SIGTERM handler, so SIGKILL follows after ~2 s
    t0 = time.monotonic()
    assert pb(root, "stop", "-t", "2", "web").stdout == "web\n"
    took = time.monotonic() - t0
    assert 1.8 <= took < 5, took
    assert re.search(r"Exited \(137\) .* ago", pb(root, "ps", "-a").stdout)
    state = json.loads(pb(root, "inspect", "web").stdout)[0]["State"]
    assert (state["Status"], state["ExitCode"], state["OOMKilled"], state["Pid"]) == ("exited", 137, False, 0)
    assert state["FinishedAt"] > state["StartedAt"]
    assert pb(root, "ps", "-q").stdout == ""
    assert curl(port) == ""

    # start brings it back, with what it wrote earlier
    assert pb(root, "start", "web").stdout == "web\n"
    assert pb_proc(root, "exec", "web", "cat", "/root/marker").stdout == "persisted\n"
    wait_for(lambda: "edited on the host" in curl(port))
    assert re.search(r"Up .*web", pb(root, "ps").stdout)

    # rm -f leaves nothing behind
    snapshots_before_rm = sorted(p.name for p in (root / "snapshots").iterdir())
    pid = json.loads(pb(root, "container", "inspect", "web").stdout)[0]["State"]["Pid"]
    assert pb(root, "rm", "-f", "web").stdout == "web\n"
    assert not (root / "containers" / cid).exists()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    nets = NetworkStore(root / "networks").list_all()
    left = traces(root, [cid], [n.id for n in nets], [n.bridge for n in nets], [(pid, None)])
    assert left == {"links": [], "nft": [], "iptables": [], "mounts": [], "cgroups": [], "procs": []}
    assert len(sorted(p.name for p in (root / "snapshots").iterdir())) <= len(snapshots_before_rm)
    assert pb(root, "ps", "-aq").stdout == ""


def test_two_containers_reach_each_other_by_name(lab: Path, tmp_path: Path) -> None:
    root = lab
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("from srv\n")
    net = f"app{SUFFIX}"
    assert pb(root, "network", "create", net).code == 0
    assert pb(root, "run", "-d", "--network", net, "--name", "srv", "--network-alias", "api",
              "-v", f"{www}:/www", "busybox", "httpd", "-f", "-p", "80", "-h", "/www").code == 0
    assert pb(root, "run", "-d", "--network", net, "--name", "client", "busybox", "sleep", "600").code == 0
    got = pb_proc(root, "exec", "client", "wget", "-qO-", "http://srv/")
    assert (got.returncode, got.stdout) == (0, "from srv\n"), got.stderr
    by_alias = pb_proc(root, "exec", "client", "wget", "-qO-", "http://api/")
    assert (by_alias.returncode, by_alias.stdout) == (0, "from srv\n"), by_alias.stderr
    back = pb_proc(root, "exec", "srv", "ping", "-c", "1", "-W", "2", "client")
    assert back.returncode == 0 and "1 packets received" in back.stdout
    # a container on the default network is not reachable by name, and cannot resolve them
    assert pb(root, "run", "-d", "--name", "outsider", "busybox", "sleep", "600").code == 0
    assert pb_proc(root, "exec", "outsider", "wget", "-qO-", "-T", "2", "http://srv/").returncode != 0
    assert pb(root, "rm", "-f", "srv", "client", "outsider").code == 0
    assert pb(root, "network", "rm", net).stdout == f"{net}\n"


@pytest.mark.slow
def test_fifty_cycles_leak_nothing(lab: Path) -> None:
    root = lab
    cids: list[str] = []
    pids: list[tuple[int, int | None]] = []

    def files() -> dict[str, list[str]]:
        out = {}
        for sub in ("containers", "snapshots", "volumes"):
            base = root / sub
            out[sub] = sorted(str(p.relative_to(base)) for p in base.rglob("*")) if base.exists() else []
        nets = root / "networks"
        out["endpoints"] = sorted(p.read_text() for p in nets.rglob("endpoints.json")) \
            if nets.exists() else []
        return out

    def cycle(i: int) -> None:
        port = free_loopback_port()
        r = pb(root, "run", "-d", "-p", f"{port}:80", "--name", f"c{i}", "busybox", "sh", "-c",
               "trap 'exit 0' TERM; while :; do sleep 0.05; done")
        assert r.code == 0, r.stderr
        c = ContainerStore(root / "containers").get(f"c{i}")
        cids.append(c.id)
        st = c.state()
        shim = int(Path(f"/proc/{st.pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        pids.extend([(st.pid, st.pid_start), (st.monitor_pid, st.monitor_start),
                     (shim, process_start_time(shim))])
        with open(os.devnull, "w") as devnull:
            saved = os.dup(1)
            os.dup2(devnull.fileno(), 1)
            try:
                code = exec_in_container(root, c, ExecOptions(argv=("true",)))
            finally:
                os.dup2(saved, 1)
                os.close(saved)
        assert code == 0
        assert pb(root, "stop", "-t", "5", f"c{i}").code == 0
        assert c.state().exit_code == 0            # the trap ran: a graceful stop, not a kill
        assert pb(root, "rm", f"c{i}").code == 0

    def ours() -> dict[str, list[str]]:
        nets = NetworkStore(root / "networks").list_all()
        return traces(root, cids, [n.id for n in nets], [n.bridge for n in nets], pids)

    cycle(0)          # warm-up: unpacks the image layer once, creates the network state
    before_host, before_files = ours(), files()
    counts_before = {k: len(v) for k, v in snapshot_host().items()}
    t0 = time.monotonic()
    for i in range(1, 51):
        cycle(i)
    elapsed = time.monotonic() - t0
    after_host, after_files = ours(), files()
    counts_after = {k: len(v) for k, v in snapshot_host().items()}
    assert after_host == before_host == {"links": [], "nft": [], "iptables": [], "mounts": [],
                                         "cgroups": [], "procs": []}
    assert after_files == before_files
    print(f"\n50 cycles of run -d/exec/stop/rm: {elapsed:.1f}s ({elapsed / 50 * 1000:.0f} ms per cycle); "
          f"host-wide counts before {counts_before} after {counts_after}")


def test_pause_top_cp_and_port(lab: Path, tmp_path: Path) -> None:
    root = lab
    port = free_loopback_port()
    r = pb(root, "run", "-d", "--name", "ticker", "-p", f"127.0.0.1:{port}:80", "busybox", "sh", "-c",
           "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done")
    assert r.code == 0, r.stderr
    assert pb(root, "port", "ticker").stdout == f"80/tcp -> 127.0.0.1:{port}\n"

    def count() -> int:
        out = pb_proc(root, "exec", "ticker", "cat", "/tmp/count")
        return int(out.stdout.strip() or 0)

    wait_for(lambda: count() > 2)
    assert pb(root, "pause", "ticker").stdout == "ticker\n"
    assert "(Paused)" in pb(root, "ps").stdout
    refused = pb_proc(root, "exec", "ticker", "true")
    assert refused.returncode != 0 and "paused" in refused.stderr
    host_pid = json.loads(pb(root, "container", "inspect", "ticker").stdout)[0]["State"]["Pid"]
    counter = Path(f"/proc/{host_pid}/root/tmp/count")      # read from the host: exec is refused
    frozen = counter.read_text()
    time.sleep(0.4)
    assert counter.read_text() == frozen                     # nothing runs while paused
    assert pb(root, "unpause", "ticker").stdout == "ticker\n"
    before = count()
    wait_for(lambda: count() > before + 2)

    top = pb(root, "top", "ticker").stdout.splitlines()
    assert top[0].split()[:3] == ["UID", "PID", "PPID"]
    assert any(line.split()[1] == str(host_pid) for line in top[1:])

    # cp both ways, paths resolved inside the container
    src = tmp_path / "in.txt"
    src.write_text("from the host\n")
    assert pb(root, "cp", str(src), "ticker:/tmp/").code == 0
    assert pb_proc(root, "exec", "ticker", "cat", "/tmp/in.txt").stdout == "from the host\n"
    assert pb_proc(root, "exec", "ticker", "ln", "-s", "/etc", "/tmp/escape").returncode == 0
    out = tmp_path / "out"
    out.mkdir()
    assert pb(root, "cp", "ticker:/tmp/escape/passwd", str(out / "passwd")).code == 0
    assert (out / "passwd").read_text().startswith("root:x:0:0:")      # the container's, not the host's
    assert "www-data" in (out / "passwd").read_text()
    assert pb(root, "cp", "ticker:/etc", str(out)).code == 0
    assert (out / "etc" / "group").is_file()

    # a stopped container: its filesystem is mounted privately for the copy
    assert pb(root, "stop", "-t", "1", "ticker").code == 0
    assert pb(root, "cp", "ticker:/tmp/in.txt", str(out / "back.txt")).code == 0
    assert (out / "back.txt").read_text() == "from the host\n"
    (tmp_path / "late.txt").write_text("copied while stopped\n")
    assert pb(root, "cp", str(tmp_path / "late.txt"), "ticker:/tmp/late.txt").code == 0
    mounts_before = Path("/proc/self/mountinfo").read_text()
    assert str(root) not in mounts_before                   # nothing was mounted on the host
    assert pb(root, "start", "ticker").code == 0
    assert pb_proc(root, "exec", "ticker", "cat", "/tmp/late.txt").stdout == "copied while stopped\n"
    assert pb(root, "rm", "-f", "ticker").code == 0


def test_a_killed_monitor_takes_the_container_along(lab: Path) -> None:
    root = lab
    port = free_loopback_port()
    assert pb(root, "run", "-d", "--name", "doomed", "-p", f"{port}:80", "busybox", "sleep", "600").code == 0
    c = ContainerStore(root / "containers").get("doomed")
    st = c.state()
    os.kill(st.monitor_pid, 9)
    wait_for(lambda: process_start_time(st.pid) is None)      # gone, or a zombie
    assert re.search(r"Exited \(\d+\) .*doomed", pb(root, "ps", "-a").stdout)
    assert pb(root, "ps", "-q").stdout == ""
    assert pb(root, "rm", "doomed").code == 0           # its network endpoint and rules go too
    nets = NetworkStore(root / "networks").list_all()
    left = traces(root, [c.id], [n.id for n in nets], [n.bridge for n in nets], [(st.pid, st.pid_start)])
    assert left == {"links": [], "nft": [], "iptables": [], "mounts": [], "cgroups": [], "procs": []}


def test_named_volume_is_filled_from_the_image_once(lab: Path) -> None:
    root = lab
    assert pb(root, "run", "-d", "--name", "v1", "-v", "etcdata:/etc", "busybox", "sleep", "600").code == 0
    mountpoint = Path(json.loads(pb(root, "volume", "inspect", "etcdata").stdout)[0]["Mountpoint"])
    assert (mountpoint / "passwd").read_text().startswith("root:x:0:0:")     # copied from the image
    assert pb_proc(root, "exec", "v1", "sh", "-c", "echo shared > /etc/marker").returncode == 0
    rm_busy = pb(root, "volume", "rm", "etcdata")
    assert rm_busy.code == 1 and "in use" in rm_busy.stderr
    # a second container sees the volume's content, not the image's
    assert pb(root, "run", "-d", "--name", "v2", "-v", "etcdata:/etc", "busybox", "sleep", "600").code == 0
    assert pb_proc(root, "exec", "v2", "cat", "/etc/marker").stdout == "shared\n"
    assert pb(root, "rm", "-f", "-v", "v1", "v2").code == 0
    assert pb(root, "volume", "ls", "-q").stdout == "etcdata\n"     # rm -v keeps named volumes
    assert pb(root, "volume", "rm", "etcdata").stdout == "etcdata\n"


def test_oom_kill_is_recorded_by_the_monitor(lab: Path) -> None:
    root = lab
    r = pb(root, "run", "-d", "--name", "hog", "--memory", "16m", "busybox", "dd", "if=/dev/zero",
           "of=/dev/null", "bs=96M", "count=1")
    assert r.code == 0, r.stderr
    c = ContainerStore(root / "containers").get("hog")
    wait_for(lambda: c.state().status == "exited", timeout=20)
    state = json.loads(pb(root, "inspect", "hog").stdout)[0]["State"]
    assert (state["ExitCode"], state["OOMKilled"]) == (137, True)


def test_exec_with_a_tty_env_user_and_workdir(lab: Path) -> None:
    root = lab
    assert pb(root, "run", "-d", "--name", "box", "busybox", "sleep", "600").code == 0
    t = pb_proc(root, "exec", "-t", "box", "tty")
    assert t.returncode == 0 and re.match(r"/dev/pts/\d+\r?\n$", t.stdout), (t.stdout, t.stderr)
    env = pb_proc(root, "exec", "-e", "GREETING=hi", "-u", "nobody", "-w", "/tmp", "box", "sh", "-c",
                  'echo "$GREETING $(id -un) $(pwd)"')
    assert env.stdout == "hi nobody /tmp\n"
    fed = subprocess.run([sys.executable, "-m", "builder", "--root", str(root), "exec", "-i", "box", "cat"],
                         input="through stdin\n", capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)
    assert fed.stdout == "through stdin\n"
    assert pb_proc(root, "exec", "box", "sh", "-c", "exit 3").returncode == 3
    missing = pb_proc(root, "exec", "box", "no-such-cmd")
    assert missing.returncode == 127 and "no-such-cmd" in missing.stderr
    detached = pb_proc(root, "exec", "-d", "box", "sh", "-c", "sleep 0.2; echo done > /tmp/bg")
    assert detached.returncode == 0
    wait_for(lambda: pb_proc(root, "exec", "box", "cat", "/tmp/bg").stdout == "done\n")
    assert pb(root, "rm", "-f", "box").code == 0


def test_foreground_bridge_runs_back_to_back_leave_nothing(lab: Path) -> None:
    """`run --rm` on the default bridge: an address, the default route, and after the run (its
    network teardown finishes in the background, under the network's lock) nothing left; a
    second run right after waits for that teardown and gets the same address."""
    root = lab
    script = "ip -4 -o addr show eth0; ip route"
    outs = []
    for _ in range(2):
        r = pb_proc(root, "run", "--rm", "busybox", "sh", "-c", script)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    store = NetworkStore(root / "networks")
    net = store.get("bridge")
    store.settle()
    assert outs[0] == outs[1]
    ip = re.search(r"inet (\S+)/(\d+)", outs[0])
    assert ip is not None and ip.group(1) in [str(h) for h in ipaddress.IPv4Network(net.subnet).hosts()]
    assert f"default via {net.gateway} dev eth0" in outs[0]
    assert not [p for p in (root / "containers").iterdir() if not p.name.startswith(".")]
    left = traces(root, [], [net.id], [net.bridge], [])
    assert left == {"links": [], "nft": [], "iptables": [], "mounts": [], "cgroups": [], "procs": []}


@pytest.mark.slow
def test_parallel_foreground_bridge_runs_share_the_network_and_leave_nothing(lab: Path) -> None:
    """Three streams of `run --rm` on the default bridge at once: first-endpoint bring-ups and
    last-endpoint (background) teardowns interleave under the network's lock; every run gets
    an address and reaches its gateway; afterwards no veth, bridge, table or record is left."""
    root = lab
    script = ("ip -4 -o addr show eth0 | wc -l; "
              "ping -c1 -W2 $(ip r | awk '/default/{print $3}') >/dev/null && echo ok")
    argv = [sys.executable, "-m", "builder", "--root", str(root), "run", "--rm", "busybox", "sh", "-c",
            script]

    def stream() -> list[str]:
        outs = []
        for _ in range(5):
            r = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
            outs.append(f"{r.returncode}:{r.stdout.split()}:{r.stderr.strip()[-200:]}")
        return outs

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        results = [o for f in [pool.submit(stream) for _ in range(3)] for o in f.result()]
    assert results == ["0:['1', 'ok']:"] * 15
    store = NetworkStore(root / "networks")
    store.settle()
    net = store.get("bridge")
    assert store.endpoints(net) == []
    assert not [p for p in (root / "containers").iterdir() if not p.name.startswith(".")]
    left = traces(root, [], [net.id], [net.bridge], [])
    assert left == {"links": [], "nft": [], "iptables": [], "mounts": [], "cgroups": [], "procs": []}
