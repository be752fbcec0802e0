"""runtime.spec (pure): docker's rules for ENTRYPOINT/CMD, env, capabilities, flag parsing, and
the shape of the OCI config.json; nsinit's pure helpers (USER resolution, seccomp program)."""

from __future__ import annotations

import pytest

from registry.model import ContainerConfig
from runtime import nsinit
from runtime import spec as S
from runtime.cgroups import Resources
from runtime.idmap import IdMapping, IdRange

PASSWD = ("root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/false\n"
          "app:x:1000:1000::/home/app:/bin/sh\n")
GROUP = "root:x:0:\nwheel:x:10:root,app\nwww-data:x:33:\napp:x:1000:\ndocker:x:999:app\n"


@pytest.mark.parametrize(("ep", "cmd", "override", "args", "want"), [
    (None, ("sh",), None, (), ["sh"]),
    (("/entry",), ("a", "b"), None, (), ["/entry", "a", "b"]),
    (("/entry",), ("a",), None, ("x",), ["/entry", "x"]),
    (("/entry",), ("a",), ("/other",), (), ["/other"]),          # --entrypoint drops CMD
    (("/entry",), ("a",), ("/other",), ("y",), ["/other", "y"]),
    (("/entry",), ("a",), (), ("ls",), ["ls"]),                  # --entrypoint ""
])
def test_command_combination(ep: tuple[str, ...] | None, cmd: tuple[str, ...] | None,
                             override: tuple[str, ...] | None, args: tuple[str, ...],
                             want: list[str]) -> None:
    assert S.command(ep, cmd, override, args) == want


def test_no_command_is_an_error() -> None:
    with pytest.raises(S.SpecError, match="no command specified"):
        S.command(None, None, None, ())


def test_env_merge_keeps_order_and_later_wins() -> None:
    assert S.merge_env(["A=1", "B=2"], ["A=3", "C"]) == ["A=3", "B=2", "C="]


def test_capabilities_rules() -> None:
    assert S.capabilities((), (), privileged=False) == sorted(S.DEFAULT_CAPS, key=_capnum)
    caps = S.capabilities(("sys_admin",), ("CAP_CHOWN", "net_raw"), privileged=False)
    assert "CAP_SYS_ADMIN" in caps and "CAP_CHOWN" not in caps and "CAP_NET_RAW" not in caps
    assert S.capabilities(("NET_BIND_SERVICE",), ("ALL",), privileged=False) == ["CAP_NET_BIND_SERVICE"]
    assert "CAP_SYS_MODULE" in S.capabilities((), (), privileged=True)
    with pytest.raises(S.SpecError, match="unknown capability"):
        S.capabilities(("CAP_FLY",), (), privileged=False)


def _capnum(name: str) -> int:
    from runtime._syscalls import CAP_NUMBERS

    return CAP_NUMBERS[name]


@pytest.mark.parametrize(("text", "want"), [("32m", 32 << 20), ("1g", 1 << 30), ("512k", 512 << 10),
                                            ("1048576", 1 << 20), ("1.5g", 3 << 29), ("64MB", 64 << 20)])
def test_parse_bytes(text: str, want: int) -> None:
    assert S.parse_bytes(text) == want


def test_parse_bytes_rejects_junk() -> None:
    with pytest.raises(S.SpecError):
        S.parse_bytes("lots")


def test_parse_cpus() -> None:
    assert S.parse_cpus("0.5") == 50_000
    assert S.parse_cpus("2") == 200_000
    with pytest.raises(S.SpecError):
        S.parse_cpus("-1")


def test_env_file_and_env_args() -> None:
    text = "# comment\n\nA=1\nB = 2\nHOSTVAR\nMISSING\n"
    assert S.parse_env_file(text.replace("B = 2", "B=2"), {"HOSTVAR": "h"}) == ["A=1", "B=2", "HOSTVAR=h"]
    assert S.parse_env_arg("X=y", {}) == "X=y"
    assert S.parse_env_arg("HOME", {"HOME": "/h"}) == "HOME=/h"
    assert S.parse_env_arg("NOPE", {}) is None


def test_parse_mount_and_tmpfs() -> None:
    m = S.parse_mount("type=bind,source=/src,target=/dst,readonly")
    assert (m["type"], m["source"], m["target"], m["readonly"]) == ("bind", "/src", "/dst", True)
    t = S.parse_mount("type=tmpfs,destination=/t,tmpfs-size=1m,tmpfs-mode=1777")
    assert t["options"] == [f"size={1 << 20}", "mode=1777"]
    with pytest.raises(S.SpecError):
        S.parse_mount("type=bind,target=/x")
    with pytest.raises(S.SpecError):
        S.parse_mount("type=tmpfs,target=relative")
    tm = S.parse_tmpfs("/run:exec,size=64m")
    assert tm["destination"] == "/run" and "noexec" not in tm["options"] and "size=64m" in tm["options"]


def test_build_spec_defaults() -> None:
    cfg = ContainerConfig(env=("PATH=/bin", "A=1"), cmd=("sh",), user="www-data", working_dir="/w")
    spec = S.build_spec(cfg, S.RunOptions(env=("A=2",)), root_path="/r", state_dir="/s",
                        container_id="a" * 64)
    p = spec["process"]
    assert p["args"] == ["sh"] and p["cwd"] == "/w" and p["noNewPrivileges"] is True
    assert p["env"] == ["PATH=/bin", "A=2", "HOSTNAME=aaaaaaaaaaaa"]
    assert p["capabilities"]["bounding"] == p["capabilities"]["effective"]
    assert p["capabilities"]["inheritable"] == [] and p["capabilities"]["ambient"] == []
    assert spec["hostname"] == "aaaaaaaaaaaa"
    assert spec["annotations"][S.ANN_USER] == "www-data"
    ns = {n["type"] for n in spec["linux"]["namespaces"]}
    assert ns == {"pid", "ipc", "uts", "mount", "network"}
    assert spec["linux"]["maskedPaths"] == list(S.MASKED_PATHS)
    assert "/proc/sys" in spec["linux"]["readonlyPaths"]
    dests = [m["destination"] for m in spec["mounts"]]
    assert dests[:6] == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"]
    assert {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"} <= set(dests)
    assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ALLOW"
    assert spec["linux"]["resources"]["devices"][0] == {"allow": False, "access": "rwm"}


def test_build_spec_host_network_privileged_and_userns() -> None:
    idmap = IdMapping((IdRange(0, 1000, 1),), (IdRange(0, 1000, 1),))
    spec = S.build_spec(None, S.RunOptions(args=("true",), network="host", privileged=True,
                                           resources=Resources(memory=1 << 26)),
                        root_path="/r", idmap=idmap, rootless=True)
    ns = {n["type"] for n in spec["linux"]["namespaces"]}
    assert "network" not in ns and "user" in ns
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 1000, "size": 1}]
    assert "maskedPaths" not in spec["linux"] and "seccomp" not in spec["linux"]
    assert spec["process"]["noNewPrivileges"] is False
    sys_mount = next(m for m in spec["mounts"] if m["destination"] == "/sys")
    assert sys_mount["type"] == "bind"                       # sysfs needs an owned netns
    pts = next(m for m in spec["mounts"] if m["destination"] == "/dev/pts")
    assert "gid=5" not in pts["options"]                     # gid 5 is not mapped
    assert spec["linux"]["resources"]["memory"] == {"limit": 1 << 26}


def test_resolv_conf_drops_loopback_servers() -> None:
    assert S.resolv_conf("nameserver 127.0.0.53\nsearch x\n") == \
        "search x\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    assert S.resolv_conf("nameserver 10.0.0.2\n") == "nameserver 10.0.0.2\n"
    assert S.resolv_conf("nameserver 127.0.0.53\n", host_network=True) == "nameserver 127.0.0.53\n"


@pytest.mark.parametrize(("user", "want"), [
    ("", (0, 0, [0, 10], "/root")),
    ("root", (0, 0, [0, 10], "/root")),
    ("app", (1000, 1000, [1000, 10, 999], "/home/app")),
    ("1000", (1000, 1000, [1000, 10, 999], "/home/app")),
    ("app:www-data", (1000, 33, [33], "/home/app")),
    ("4242", (4242, 0, [0], "/")),
    ("4242:4343", (4242, 4343, [4343], "/")),
])
def test_resolve_user(user: str, want: tuple[int, int, list[int], str]) -> None:
    assert nsinit.resolve_user(user, PASSWD, GROUP) == want


@pytest.mark.parametrize("user", ["ghost", "app:nogroup"])
def test_resolve_user_unknown_names(user: str) -> None:
    with pytest.raises(nsinit.Failure, match="unable to find"):
        nsinit.resolve_user(user, PASSWD, GROUP)


def test_seccomp_program_shape() -> None:
    prog = nsinit.seccomp_program(S.seccomp_profile())
    assert prog[0] == (0x20, 0, 0, 4)                      # load the arch first
    assert prog[-1] == (0x06, 0, 0, 0x7FFF0000)            # default: allow
    denied = {k for code, _, _, k in prog if code == 0x15}
    assert {165, 272, 308, 155} <= denied                  # mount unshare setns pivot_root
    with pytest.raises(nsinit.Failure):
        nsinit.seccomp_program({"defaultAction": "SCMP_ACT_ERRNO"})


def test_frames_round_trip() -> None:
    import os

    r, w = os.pipe()
    os.write(w, nsinit.encode_frame({"type": "go", "n": 1}))
    os.close(w)
    assert nsinit.recv_frame(r) == {"type": "go", "n": 1}
    with pytest.raises(EOFError):
        nsinit.recv_frame(r)
    os.close(r)
