"""Rootless containers that outlive the command: an unprivileged user (made here with useradd
and a subordinate id range, removed afterwards) runs `run -d`, `ps`, `logs`, `exec`, `stop`,
`start`, `rm`; the monitor and exec join the container's user namespace. Networking rootless
is slirp4netns: where this user cannot open /dev/net/tun the run must fail with that reason."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.store import DirStore
from tests.support.images import build_busybox, have_busybox
from tests.support.registry_server import free_loopback_port

REPO = Path(__file__).resolve().parents[2]
SUBID_START, SUBID_COUNT = 420000, 65536

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_userns, pytest.mark.slow]


@dataclass
class User:
    name: str
    uid: int
    store: Path
    work: Path
    python: str


def _others_can_run(path: str) -> bool:
    real = Path(path).resolve()
    return bool(real.stat().st_mode & 0o001) and all(p.stat().st_mode & 0o001 for p in real.parents)


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[User]:
    for tool in ("useradd", "userdel", "usermod", "runuser", "newuidmap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    if not have_busybox():
        pytest.skip("busybox-static not installed")
    python = sys.executable
    if not _others_can_run(python):
        minor = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        python = shutil.which(minor, path="/usr/bin:/usr/local/bin") or ""
        if not python or not _others_can_run(python):
            pytest.skip(f"no {minor} an unprivileged user can execute")
    name = f"pblc{secrets.token_hex(3)}"
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "-K", "SUB_UID_COUNT=0",
                    "-K", "SUB_GID_COUNT=0", name], check=True)
    base = Path(tmp_path_factory.mktemp("rootless-lifecycle"))
    try:
        last = SUBID_START + SUBID_COUNT - 1
        subprocess.run(["usermod", "--add-subuids", f"{SUBID_START}-{last}",
                        "--add-subgids", f"{SUBID_START}-{last}", name], check=True)
        import pwd

        pw = pwd.getpwnam(name)
        base.chmod(0o755)
        for p in base.parents:
            if str(p).startswith("/tmp/") and p.stat().st_mode & 0o005 != 0o005:
                p.chmod(p.stat().st_mode | 0o005)
        store = base / "store"
        build_busybox(DirStore(store))
        work = base / "work"
        work.mkdir()
        subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(base)], check=True)
        yield User(name, pw.pw_uid, store, work, python)
    finally:
        # whatever a failed test left running as that user goes (by pid) before the user does
        left = subprocess.run(["pgrep", "-u", name], capture_output=True, text=True).stdout.split()
        for pid in left:
            try:
                os.kill(int(pid), 9)
            except OSError:
                pass
        subprocess.run(["userdel", name], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def as_user(u: User, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    import click

    site = str(Path(click.__file__).resolve().parent.parent)
    boot = (f"import sys, importlib.util; sys.path[:0] = [{str(REPO)!r}, {site!r}]; "
            "from builder.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(u.work), "LANG": "C.UTF-8"}
    argv = ["runuser", "-u", u.name, "--", u.python, "-c", boot, "--root", str(u.store), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=u.work, env=env,
                          check=False)


def test_rootless_detached_lifecycle(user: User) -> None:
    r = as_user(user, "run", "-d", "--network", "none", "--name", "rl", "busybox", "sh", "-c",
                "echo started; echo data > /root/kept; while :; do sleep 0.1; done")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid)
    assert re.search(r"Up .* rl", as_user(user, "ps").stdout)
    deadline = time.monotonic() + 10
    while "started" not in as_user(user, "logs", "rl").stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    assert as_user(user, "logs", "rl").stdout == "started\n"
    ps = as_user(user, "exec", "rl", "ps")
    assert ps.returncode == 0, ps.stderr
    assert ps.stdout.splitlines()[1].split()[0] == "1"
    ident = as_user(user, "exec", "rl", "sh", "-c", "id -u; cat /proc/self/uid_map")
    lines = ident.stdout.split("\n")
    assert lines[0] == "0"                                   # root in the container...
    assert f"0 {user.uid} 1" in " ".join(ident.stdout.split())  # ...is the user on the host
    t0 = time.monotonic()
    assert as_user(user, "stop", "-t", "1", "rl").stdout == "rl\n"
    assert time.monotonic() - t0 < 6
    assert "Exited (137)" in as_user(user, "ps", "-a").stdout
    assert as_user(user, "start", "rl").returncode == 0
    assert as_user(user, "exec", "rl", "cat", "/root/kept").stdout == "data\n"
    assert as_user(user, "rm", "-f", "rl").stdout == "rl\n"
    assert not (user.store / "containers" / cid).exists()
    deadline = time.monotonic() + 5
    while True:     # nothing of the user's left running (an exited one may wait to be reaped)
        left = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-u", user.name], capture_output=True,
                              text=True).stdout
        running = [line for line in left.splitlines() if line.split()[1][0] != "Z"]
        if not running or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert running == []


def test_rootless_default_network_is_slirp4netns(user: User) -> None:
    port = free_loopback_port()
    r = as_user(user, "run", "-d", "--name", "rlnet", "-p", f"127.0.0.1:{port}:80", "busybox", "httpd",
                "-f", "-p", "80", "-h", "/etc")
    try:
        tun_ok = subprocess.run(["runuser", "-u", user.name, "--", "test", "-r", "/dev/net/tun", "-a",
                                 "-w", "/dev/net/tun"]).returncode == 0
        if not tun_ok or shutil.which("slirp4netns") is None:
            # this host: /dev/net/tun is 0600, so slirp4netns cannot run for this user
            assert r.returncode == 125
            assert "slirp4netns" in r.stderr and "hint:" in r.stderr
            return
        assert r.returncode == 0, r.stderr
        out = ""
        deadline = time.monotonic() + 10
        while "root:x:0:0" not in out and time.monotonic() < deadline:
            out = subprocess.run(["curl", "-s", "-m", "3", f"http://127.0.0.1:{port}/passwd"],
                                 capture_output=True, text=True).stdout
            time.sleep(0.1)
        assert "root:x:0:0" in out
    finally:
        as_user(user, "rm", "-f", "rlnet")
    assert os.path.exists(user.store)
