"""The container as data: an OCI runtime-spec ``config.json`` from an image config plus docker-style
overrides (``RunOptions``); runtime.nsinit consumes exactly this document, and runc gets the same.
pybuild-only data rides in ``io.pybuild.*`` annotations (the unresolved USER, --init, seccomp). Pure,
no I/O. Imports runtime.cgroups/errors (_syscalls' capability tables inside functions)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime.cgroups import DEFAULT_DEVICE_RULES, Resources
from runtime.errors import SandboxError

if TYPE_CHECKING:
    from registry.model import ContainerConfig
    from runtime.idmap import IdMapping

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's default capability set (moby oci/caps/defaults.go).
DEFAULT_CAPS: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)
# runc's masked and read-only paths (`runc spec`), plus powercap (docker, CVE-2020-8694).
MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)

ANN_USER = "io.pybuild.user"              # USER as written (name, uid, uid:gid): resolved in the rootfs
ANN_INIT = "io.pybuild.init"              # "true": a reaper runs as PID 1
ANN_SECCOMP = "io.pybuild.seccomp"        # "default" | "unconfined"
ANN_NETWORK = "io.pybuild.network"        # "none" | "host" | "private" | a lifecycle network name
ANN_PRIVILEGED = "io.pybuild.privileged"  # "true": no device restrictions, host devices in /dev

ALL_CAPS = "ALL"


class SpecError(SandboxError):
    """A run option that makes no sense (exit 125, like docker's flag errors)."""


@dataclass(frozen=True)
class RunOptions:
    """Docker-style overrides for one container or one RUN step."""

    args: tuple[str, ...] = ()                 # replaces CMD when non-empty
    entrypoint: tuple[str, ...] | None = None  # replaces ENTRYPOINT (and drops CMD); () = none
    env: tuple[str, ...] = ()                  # KEY=VALUE, later wins
    user: str | None = None
    workdir: str | None = None
    hostname: str | None = None
    domainname: str | None = None
    network: str = "private"                   # "private"/"none": own netns, loopback only; "host"
    mounts: tuple[Mapping[str, Any], ...] = () # extra OCI mounts (binds, tmpfs, volumes)
    read_only: bool = False
    tty: bool = False
    init: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    no_new_privileges: bool = True
    seccomp: bool = True
    resources: Resources = field(default_factory=Resources)
    rlimits: tuple[tuple[str, int, int], ...] = ()   # (RLIMIT_NOFILE, soft, hard)
    annotations: Mapping[str, str] = field(default_factory=dict)
    etc_files: bool = True                     # bind hosts/hostname/resolv.conf from state_dir
    devices_cgroup: bool = True


# -- parsing helpers (shared by the CLI and the builder) ---------------------------------------
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_bytes(text: str, *, what: str = "size") -> int:
    """Docker's RAMInBytes: ``32m``, ``1g``, ``512k``, ``1.5g``, ``1048576`` (binary units)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([bkmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise SpecError(f"invalid {what} {text!r}: want a number with an optional unit (b, k, m, g)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def parse_cpus(text: str, period: int = 100_000) -> int:
    """``--cpus 0.5`` -> CFS quota in µs for ``period``."""
    try:
        value = float(text)
    except ValueError:
        raise SpecError(f"invalid --cpus {text!r}: want a number such as 0.5 or 2") from None
    if value <= 0:
        raise SpecError(f"invalid --cpus {text!r}: must be positive")
    return int(round(value * period))


def parse_env_file(text: str, host_env: Mapping[str, str]) -> list[str]:
    """docker's --env-file: KEY=VALUE lines; a bare KEY takes the host's value (or is skipped)."""
    out = []
    for raw in text.splitlines():
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        if "=" in line:
            key, _, value = line.partition("=")
            if not key or any(c.isspace() for c in key):
                raise SpecError(f"invalid env file line {raw!r}: bad variable name")
            out.append(f"{key}={value}")
        elif line.rstrip() in host_env:
            out.append(f"{line.rstrip()}={host_env[line.rstrip()]}")
    return out


def parse_env_arg(item: str, host_env: Mapping[str, str]) -> str | None:
    """``-e KEY=VALUE`` as is; ``-e KEY`` takes the host's value (skipped when unset)."""
    if "=" in item:
        if item.startswith("="):
            raise SpecError(f"invalid environment variable {item!r}")
        return item
    return f"{item}={host_env[item]}" if item in host_env else None


def bind_mount(source: str, destination: str, *, readonly: bool = False,
               options: Sequence[str] = ()) -> dict[str, Any]:
    opts = ["rbind"] + [o for o in options if o not in ("ro", "rw", "z", "Z", "nocopy")]
    opts.append("ro" if readonly else "rw")
    return {"destination": destination, "type": "bind", "source": source, "options": opts}


def tmpfs_mount(destination: str, options: Sequence[str] = ()) -> dict[str, Any]:
    opts = ["nosuid", "nodev", "noexec"]
    for o in options:
        if o in ("exec", "dev", "suid"):
            opts = [x for x in opts if x != "no" + o]
        else:
            opts.append(o)
    return {"destination": destination, "type": "tmpfs", "source": "tmpfs", "options": opts}


def parse_mount(text: str) -> dict[str, Any]:
    """``--mount type=bind|tmpfs,...`` -> a dict with type, source, target, readonly, options."""
    fields: dict[str, str] = {}
    flags: set[str] = set()
    for item in text.split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep:
            flags.add(key)
            continue
        fields[key] = value
    mtype = fields.get("type", "volume")
    target = fields.get("target") or fields.get("destination") or fields.get("dst")
    if not target:
        raise SpecError(f"invalid --mount {text!r}: target is required")
    readonly = bool({"readonly", "ro"} & flags) or fields.get("readonly", fields.get("ro", "false")) \
        in ("1", "true")
    out: dict[str, Any] = {"type": mtype, "target": _abs_dest(target), "readonly": readonly,
                           "source": fields.get("source") or fields.get("src") or ""}
    if mtype == "bind":
        if not out["source"]:
            raise SpecError(f"invalid --mount {text!r}: type=bind needs source=")
        prop = fields.get("bind-propagation")
        out["options"] = [prop] if prop else []
    elif mtype == "tmpfs":
        if out["source"]:
            raise SpecError(f"invalid --mount {text!r}: type=tmpfs takes no source")
        opts = []
        if "tmpfs-size" in fields:
            opts.append(f"size={parse_bytes(fields['tmpfs-size'], what='tmpfs-size')}")
        if "tmpfs-mode" in fields:
            mode = fields["tmpfs-mode"]
            if not re.fullmatch(r"[0-7]{1,4}", mode):
                raise SpecError(f"invalid tmpfs-mode {mode!r}: want octal")
            opts.append(f"mode={mode}")
        out["options"] = opts
    elif mtype != "volume":
        raise SpecError(f"invalid --mount {text!r}: type must be bind, tmpfs or volume")
    return out


def parse_tmpfs(text: str) -> dict[str, Any]:
    """``--tmpfs /run[:opts]`` -> an OCI tmpfs mount."""
    dest, _, opts = text.partition(":")
    return tmpfs_mount(_abs_dest(dest), [o for o in opts.split(",") if o])


def _abs_dest(path: str) -> str:
    if not path.startswith("/"):
        raise SpecError(f"invalid mount destination {path!r}: must be an absolute path")
    if ".." in path.split("/"):
        raise SpecError(f"invalid mount destination {path!r}: must not contain '..'")
    return path


def normalize_cap(name: str) -> str:
    up = name.strip().upper()
    if up == ALL_CAPS:
        return up
    if not up.startswith("CAP_"):
        up = "CAP_" + up
    from runtime._syscalls import CAP_NUMBERS

    if up not in CAP_NUMBERS:
        raise SpecError(f"unknown capability {name!r}")
    return up


def capabilities(cap_add: Sequence[str], cap_drop: Sequence[str], *, privileged: bool) -> list[str]:
    """Docker's rule: start from the default set (all for --privileged), add, then drop;
    ``ALL`` works on both sides and an explicit add wins over ``--cap-drop ALL``."""
    from runtime._syscalls import CAP_NAMES, cap_last_cap

    every = list(CAP_NAMES[: cap_last_cap() + 1])
    adds = [normalize_cap(c) for c in cap_add]
    drops = [normalize_cap(c) for c in cap_drop]
    caps = set(every) if privileged or ALL_CAPS in adds else set(DEFAULT_CAPS)
    caps |= {c for c in adds if c != ALL_CAPS}
    if ALL_CAPS in drops:
        caps = {c for c in adds if c != ALL_CAPS}
    else:
        caps -= set(drops)
    return [c for c in every if c in caps]


def command(config_entrypoint: Sequence[str] | None, config_cmd: Sequence[str] | None,
            entrypoint: Sequence[str] | None, args: Sequence[str]) -> list[str]:
    """ENTRYPOINT + CMD as docker combines them: ``--entrypoint`` replaces the image's
    ENTRYPOINT and drops its CMD; positional args replace CMD."""
    if entrypoint is not None:
        ep, cmd = list(entrypoint), []
    else:
        ep, cmd = list(config_entrypoint or ()), list(config_cmd or ())
    if args:
        cmd = list(args)
    argv = ep + cmd
    if not argv:
        raise SpecError("no command specified", hint="give a command after the image name, or "
                        "set CMD/ENTRYPOINT in the image")
    return argv


def merge_env(*layers: Sequence[str]) -> list[str]:
    """KEY=VALUE lists merged in order (later wins), first-seen order kept."""
    out: dict[str, str] = {}
    for layer in layers:
        for item in layer:
            key, sep, value = item.partition("=")
            out[key] = value if sep else ""
    return [f"{k}={v}" for k, v in out.items()]


# -- the spec ----------------------------------------------------------------------------------
def default_mounts(*, rootless: bool, network_host: bool, privileged: bool,
                   gid5_mapped: bool) -> list[dict[str, Any]]:
    pts = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
    if gid5_mapped:
        pts.append("gid=5")
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": pts},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
    ]
    sys_ro = [] if privileged else ["ro"]
    if rootless and network_host:
        # sysfs can only be mounted by the owner of the network namespace: bind the host's.
        mounts.append({"destination": "/sys", "type": "bind", "source": "/sys",
                       "options": ["rbind", "nosuid", "noexec", "nodev", *sys_ro]})
    else:
        mounts.append({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                       "options": ["nosuid", "noexec", "nodev", *sys_ro]})
    # the container's own cgroup, read-only (runtimes such as the JVM read their limits here)
    mounts.append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                   "options": ["nosuid", "noexec", "nodev", "relatime", *sys_ro]})
    return mounts


def etc_mounts(state_dir: str, *, read_only: bool = False) -> list[dict[str, Any]]:
    """/etc/hosts, /etc/hostname and /etc/resolv.conf from the container's state directory."""
    ro = ["ro"] if read_only else ["rw"]
    return [{"destination": f"/etc/{name}", "type": "bind", "source": f"{state_dir}/{name}",
             "options": ["rbind", "nosuid", "nodev", "noexec", *ro]}
            for name in ("hostname", "hosts", "resolv.conf")]


def seccomp_profile() -> dict[str, Any]:
    """A small deny-list (OCI form): namespace creation and the kernel-administration calls a
    container never needs, answered with EPERM; everything else allowed. runc and our nsinit
    both apply it. clone/clone3 with namespace flags are handled in nsinit's BPF program."""
    denied = ["acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
              "delete_module", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick",
              "get_kernel_syms", "init_module", "io_uring_enter", "io_uring_register",
              "io_uring_setup", "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie",
              "mount", "mount_setattr", "move_mount", "nfsservctl", "open_by_handle_at",
              "open_tree", "perf_event_open", "pivot_root", "query_module", "quotactl",
              "reboot", "request_key", "setns", "settimeofday", "swapoff", "swapon", "sysfs",
              "umount2", "unshare", "uselib", "userfaultfd", "ustat", "vm86", "vm86old"]
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}


def build_spec(config: ContainerConfig | None, opts: RunOptions, *, root_path: str,
               state_dir: str | None = None, container_id: str = "",
               idmap: IdMapping | None = None, rootless: bool = False,
               cgroups_path: str | None = None) -> dict[str, Any]:
    """The OCI config.json for ``config`` (the image's ContainerConfig, or None for scratch)
    with ``opts`` applied. Raises SpecError for contradictory options."""
    entry = config.entrypoint if config is not None else None
    cmd = config.cmd if config is not None else None
    argv = command(entry, cmd, opts.entrypoint, opts.args)
    network = opts.network or "private"
    host_net = network == "host"
    hostname = opts.hostname or (container_id[:12] if container_id else "pybuild")
    env = merge_env([f"PATH={DEFAULT_PATH}"], list(config.env) if config else [],
                    [f"HOSTNAME={hostname}"], ["TERM=xterm"] if opts.tty else [], opts.env)
    workdir = opts.workdir or (config.working_dir if config else "") or "/"
    if not workdir.startswith("/"):
        raise SpecError(f"invalid working directory {workdir!r}: must be absolute")
    user = opts.user if opts.user is not None else (config.user if config else "")
    caps = capabilities(opts.cap_add, opts.cap_drop, privileged=opts.privileged)
    userns = idmap is not None
    gid5 = idmap.has_gid(5) if idmap is not None else True

    mounts = default_mounts(rootless=userns, network_host=host_net, privileged=opts.privileged,
                            gid5_mapped=gid5)
    if opts.etc_files and state_dir:
        mounts += etc_mounts(state_dir)
    mounts += [dict(m) for m in opts.mounts]

    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if not host_net:
        namespaces.append({"type": "network"})
    if userns:
        namespaces.append({"type": "user"})

    linux: dict[str, Any] = {"namespaces": namespaces}
    if idmap is not None:
        linux.update(idmap.to_oci())
    if not opts.privileged:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
    resources = opts.resources.to_oci()
    if opts.devices_cgroup and not opts.privileged and not rootless:
        resources["devices"] = [{"allow": False, "access": "rwm"}] + [_device_rule(r)
                                                                       for r in DEFAULT_DEVICE_RULES]
    if resources:
        linux["resources"] = resources
    if cgroups_path:
        linux["cgroupsPath"] = cgroups_path
    seccomp = opts.seccomp and not opts.privileged
    if seccomp:
        linux["seccomp"] = seccomp_profile()

    annotations = dict(opts.annotations)
    annotations[ANN_USER] = user
    annotations[ANN_NETWORK] = network
    annotations[ANN_SECCOMP] = "default" if seccomp else "unconfined"
    if opts.init:
        annotations[ANN_INIT] = "true"
    if opts.privileged:
        annotations[ANN_PRIVILEGED] = "true"

    process: dict[str, Any] = {
        "terminal": opts.tty,
        "user": {"uid": 0, "gid": 0},
        "args": argv,
        "env": env,
        "cwd": workdir,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps,
                         "inheritable": [], "ambient": []},
        "noNewPrivileges": bool(opts.no_new_privileges and not opts.privileged),
    }
    if opts.rlimits:
        process["rlimits"] = [{"type": t, "soft": s, "hard": h} for t, s, h in opts.rlimits]
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": root_path, "readonly": opts.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
        "annotations": annotations,
    }
    if opts.domainname:
        spec["domainname"] = opts.domainname
    return spec


def _device_rule(rule: str) -> dict[str, Any]:
    kind, nums, access = rule.split()
    major, minor = nums.split(":")
    out: dict[str, Any] = {"allow": True, "type": kind, "access": access}
    if major != "*":
        out["major"] = int(major)
    if minor != "*":
        out["minor"] = int(minor)
    return out


def hosts_file(hostname: str, *, host_network: bool = False, host_hosts: str = "") -> str:
    if host_network and host_hosts:
        return host_hosts
    return ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n"
            f"ff02::2\tip6-allrouters\n127.0.0.1\t{hostname}\n")


def resolv_conf(host_text: str, *, host_network: bool = False) -> str:
    """The host's resolv.conf; without host networking, loopback nameservers are dropped (they
    are unreachable from the container) and Google's are used if none remain, as docker does."""
    if host_network:
        return host_text
    lines, servers = [], 0
    for line in host_text.splitlines():
        words = line.split()
        if words[:1] == ["nameserver"] and len(words) > 1:
            if words[1].startswith("127.") or words[1] == "::1":
                continue
            servers += 1
        lines.append(line)
    if servers == 0:
        lines += ["nameserver 8.8.8.8", "nameserver 8.8.4.4"]
    return "\n".join(lines) + "\n"
