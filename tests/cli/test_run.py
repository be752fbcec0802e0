"""`pybuild run` end to end (a subprocess, as users call it): docker's flags, exit codes and
records, on the offline busybox image in a per-test store."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.runtime.sandboxkit import _cgroup_dirs, _mounts
from tests.support.images import StoredImage

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_overlay]


def pybuild(store: StoredImage, *args: str, input: str | None = None, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", "--root", str(store.store.root), *args],
                          capture_output=True, text=True, cwd=REPO, input=input, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


def _records(store: StoredImage) -> list[Path]:
    cdir = store.store.root / "containers"
    return [p for p in cdir.iterdir() if (p / "container.json").is_file()] if cdir.is_dir() else []


@pytest.fixture
def bb(busybox_store: StoredImage) -> StoredImage:
    mounts, cgroups = _mounts(busybox_store.store.root), _cgroup_dirs()
    yield busybox_store
    assert _mounts(busybox_store.store.root) == mounts
    assert _cgroup_dirs() - cgroups == set()


def test_run_rm_prints_and_cleans_up(bb: StoredImage) -> None:
    r = pybuild(bb, "run", "--rm", "--network", "none", "busybox", "echo", "hello")
    assert (r.returncode, r.stdout) == (0, "hello\n"), r.stderr
    assert _records(bb) == []
    snaps = bb.store.root / "snapshots"
    active = [m for m in snaps.glob("*/meta.json") if json.loads(m.read_text())["kind"] == "active"]
    assert active == []                                  # the writable layer went with --rm
    r2 = pybuild(bb, "run", "--rm", "--network", "none", "busybox", "true")
    assert r2.returncode == 0
    assert "unpacked layer" not in r2.stderr             # second run: nothing unpacked again


def test_exit_codes(bb: StoredImage) -> None:
    assert pybuild(bb, "run", "--rm", "--network", "none", "busybox", "sh", "-c", "exit 3").returncode == 3
    nf = pybuild(bb, "run", "--rm", "--network", "none", "busybox", "nosuchcmd")
    assert nf.returncode == 127 and "nosuchcmd" in nf.stderr
    nx = pybuild(bb, "run", "--rm", "--network", "none", "busybox", "/etc/passwd")
    assert nx.returncode == 126
    bad = pybuild(bb, "run", "--rm", "--memory", "lots", "busybox", "true")
    assert bad.returncode == 125 and "--memory" in bad.stderr
    missing = pybuild(bb, "run", "--rm", "--pull", "never", "nosuch/image:1", "true")
    assert missing.returncode == 125 and "no such image" in missing.stderr
    assert _records(bb) == []


def test_flags_reach_the_container(bb: StoredImage, tmp_path: Path) -> None:
    envfile = tmp_path / "env"
    envfile.write_text("# comment\nFROMFILE=1\n")
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "f").write_text("volume-data")
    script = ("echo env=$A,$FROMFILE; echo cwd=$(pwd); echo id=$(id -u):$(id -g); echo host=$(hostname); "
              "echo vol=$(cat /v/f); touch /v/x 2>/dev/null; echo volro=$?; "
              "echo tmp=$(grep ' /scratch ' /proc/mounts | cut -d' ' -f3); "
              "touch /rootfile 2>/dev/null; echo rootro=$?; "
              "echo caps=$(grep CapBnd /proc/self/status | cut -f2); "
              "touch /run/x; echo run=$?")
    r = pybuild(bb, "run", "--rm", "--network", "none", "-e", "A=a", "--env-file", str(envfile),
                "-w", "/work", "-u", "33:33", "-h", "myhost", "-v", f"{vol}:/v:ro",
                "--mount", "type=tmpfs,target=/scratch", "--tmpfs", "/run:size=1m", "--read-only",
                "--cap-drop", "ALL",
                "busybox", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    v = dict(line.split("=", 1) for line in r.stdout.splitlines())
    assert v == {"env": "a,1", "cwd": "/work", "id": "33:33", "host": "myhost", "vol": "volume-data",
                 "volro": "1", "tmp": "tmpfs", "rootro": "1", "caps": "0000000000000000", "run": "0"}


def test_entrypoint_and_init(bb: StoredImage) -> None:
    r = pybuild(bb, "run", "--rm", "--network", "none", "--entrypoint", "echo", "busybox", "a", "b")
    assert r.stdout == "a b\n"
    r = pybuild(bb, "run", "--rm", "--network", "none", "--init", "busybox", "sh", "-c", "echo $$")
    assert r.stdout.strip() != "1"


def test_record_keeps_exit_code_and_oomkilled(bb: StoredImage) -> None:
    from runtime import cgroups

    if cgroups.detect() is None:
        skip_or_fail("no cgroup hierarchy (v1 or v2) is mounted on this host")
    r = pybuild(bb, "run", "--name", "oom", "--network", "none", "--memory", "32m", "busybox",
                "sh", "-c", "dd if=/dev/zero bs=1M count=100 2>/dev/null | tail")
    assert r.returncode == 137, r.stderr
    (rec,) = _records(bb)
    state = json.loads((rec / "state.json").read_text())
    record = json.loads((rec / "container.json").read_text())
    assert (state["status"], state["exit_code"], state["oom_killed"]) == ("exited", 137, True)
    assert record["name"] == "oom" and record["resources"]["memory"] == 32 << 20
    assert json.loads((rec / "bundle" / "config.json").read_text())["linux"]["resources"]["memory"] == \
        {"limit": 32 << 20}
    assert pybuild(bb, "rm", "oom").returncode == 0
    assert _records(bb) == []


@pytest.mark.needs_peer("runc")
def test_runtime_runc(bb: StoredImage) -> None:
    r = pybuild(bb, "run", "--rm", "--network", "none", "--runtime", "runc", "busybox",
                "sh", "-c", "grep CapBnd /proc/self/status | cut -f2; hostname; exit 5")
    assert r.returncode == 5, r.stderr
    cap, host = r.stdout.split()
    assert cap == "00000000a80425fb" and len(host) == 12


def test_signal_is_forwarded(bb: StoredImage) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "builder", "--root", str(bb.store.root), "run", "--rm",
                             "--network", "none", "busybox", "sh", "-c",
                             "trap 'echo term; exit 42' TERM; echo up; while :; do sleep 0.05; done"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "up\n"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 42, err
    assert "term" in out


def test_tty_and_resize(bb: StoredImage) -> None:
    """-it: a real pty inside the container; the local window size travels in and a SIGWINCH
    resize is forwarded."""
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "builder", "--root", str(bb.store.root), "run",
                                  "--rm", "-it", "--network", "none", "busybox", "sh", "-c",
                                  "tty; stty size; read x; stty size; echo bye"])
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
    out = b""

    def read_until(token: bytes, timeout: float = 15) -> None:
        nonlocal out
        deadline = time.monotonic() + timeout
        while token not in out and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    return

    read_until(b"30 90")
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    os.kill(pid, signal.SIGWINCH)
    time.sleep(0.3)
    os.write(fd, b"go\r")
    read_until(b"bye")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = out.decode(errors="replace")
    assert "/dev/pts/0" in text and "30 90" in text and "40 100" in text, text
    assert os.waitstatus_to_exitcode(status) == 0


def test_detached_run(bb: StoredImage) -> None:
    r = pybuild(bb, "run", "-d", "--network", "none", "--name", "bg", "busybox", "sleep", "30")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    assert len(cid) == 64
    state = json.loads((bb.store.root / "containers" / cid / "state.json").read_text())
    assert state["status"] == "running" and state["pid"] > 0
    assert pybuild(bb, "rm", "-f", "bg").returncode == 0
    assert _records(bb) == []


@pytest.mark.needs_registry
def test_pull_missing_image(busybox_in_registry: str, tmp_path: Path) -> None:
    from registry.store import DirStore

    empty = StoredImage(DirStore(tmp_path / "store"), "", None)  # type: ignore[arg-type]
    r = pybuild(empty, "run", "--rm", "--network", "none", busybox_in_registry, "echo", "pulled")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "pulled\n"
    assert "Unable to find image" in r.stderr
    never = pybuild(empty, "run", "--rm", "--pull", "never", "--network", "none",
                    busybox_in_registry.replace("busybox", "other"), "true")
    assert never.returncode == 125


def test_security_opts_and_userns_flag(bb: StoredImage) -> None:
    r = pybuild(bb, "run", "--rm", "--network", "none", "--security-opt", "no-new-privileges=false",
                "--security-opt", "seccomp=unconfined", "busybox", "sh", "-c",
                "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | cut -f2 | tr '\\n' ' '")
    assert r.stdout.split() == ["0", "0"], r.stderr
    bad = pybuild(bb, "run", "--rm", "--security-opt", "apparmor=x", "busybox", "true")
    assert bad.returncode == 125
    auto = pybuild(bb, "run", "--rm", "--network", "none", "--userns", "auto", "busybox", "true")
    assert auto.returncode == 125 and "--userns=auto" in auto.stderr
    assert _records(bb) == []


def test_rm_layer_is_ephemeral_and_other_layers_are_not(bb: StoredImage) -> None:
    """`run --rm` mounts its writable layer overlay 'volatile' (no sync of the host filesystem
    when it goes); a container that stays gets a normal, durable layer."""
    probe = "grep ' / ' /proc/mounts | grep -c volatile"
    r = pybuild(bb, "run", "--rm", "--network", "none", "busybox", "sh", "-c", probe)
    assert (r.returncode, r.stdout) == (0, "1\n"), r.stderr
    r = pybuild(bb, "run", "--name", "kept", "--network", "none", "busybox", "sh", "-c", probe)
    assert r.stdout == "0\n", r.stderr
    metas = [json.loads(m.read_text()) for m in (bb.store.root / "snapshots").glob("*/meta.json")]
    kept = [m for m in metas if m["kind"] == "active"]
    assert len(kept) == 1 and not kept[0].get("ephemeral")
    assert pybuild(bb, "rm", "kept").returncode == 0
