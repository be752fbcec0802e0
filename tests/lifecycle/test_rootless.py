"""Rootless containers that outlive the command: an unprivileged user (made here with useradd
and a subordinate id range, removed afterwards) runs `run -d`, `ps`, `logs`, `exec`, `stop`,
`start`, `rm`; the monitor and exec join the container's user namespace. Networking rootless
is slirp4netns: where this user cannot open /dev/net/tun the run must fail with that reason."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.support.registry_server import free_loopback_port
from tests.support.rootless import RootlessUser, pybuild_as, rootless_user

SUBID_START = 420000

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_userns, pytest.mark.slow]


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RootlessUser]:
    with rootless_user(tmp_path_factory, "pblc", subid_start=SUBID_START) as u:
        yield u


def as_user(u: RootlessUser, *args: str) -> subprocess.CompletedProcess[str]:
    return pybuild_as(u, *args, timeout=60)


def test_rootless_detached_lifecycle(user: RootlessUser) -> None:
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


def test_rootless_default_network_is_slirp4netns(user: RootlessUser) -> None:
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
