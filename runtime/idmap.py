"""User-namespace ID maps: rootless detection, /etc/subuid and /etc/subgid ranges, and writing
uid_map/gid_map (directly, or through the setuid newuidmap/newgidmap helpers).

Rootless default: container root = the calling user, plus the user's subordinate range for
ids 1..N when /etc/subuid lists one and newuidmap exists; otherwise a single-id map. Stdlib
only; no pybuild imports beyond runtime.errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import SandboxError, UnsupportedHost


@dataclass(frozen=True, slots=True)
class IdRange:
    """``container_id`` .. +size maps to ``host_id`` .. +size (one uid_map line)."""

    container_id: int
    host_id: int
    size: int

    def to_oci(self) -> dict[str, int]:
        return {"containerID": self.container_id, "hostID": self.host_id, "size": self.size}

    @classmethod
    def from_oci(cls, d: dict[str, int]) -> IdRange:
        return cls(int(d["containerID"]), int(d["hostID"]), int(d["size"]))


@dataclass(frozen=True, slots=True)
class IdMapping:
    """The uid and gid maps of one user namespace."""

    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]

    @property
    def single(self) -> bool:
        """A one-id map (no subordinate range): only container id 0 exists."""
        return sum(r.size for r in self.uids) == 1

    def host_uid(self, cid: int) -> int | None:
        return _lookup(self.uids, cid)

    def host_gid(self, cid: int) -> int | None:
        return _lookup(self.gids, cid)

    def has_gid(self, cid: int) -> bool:
        return _lookup(self.gids, cid) is not None

    def to_oci(self) -> dict[str, list[dict[str, int]]]:
        return {"uidMappings": [r.to_oci() for r in self.uids],
                "gidMappings": [r.to_oci() for r in self.gids]}

    @classmethod
    def from_oci(cls, linux: dict[str, list[dict[str, int]]]) -> IdMapping | None:
        if not linux.get("uidMappings"):
            return None
        return cls(tuple(IdRange.from_oci(d) for d in linux["uidMappings"]),
                   tuple(IdRange.from_oci(d) for d in linux.get("gidMappings") or ()))


def _lookup(ranges: tuple[IdRange, ...], cid: int) -> int | None:
    for r in ranges:
        if r.container_id <= cid < r.container_id + r.size:
            return r.host_id + cid - r.container_id
    return None


def is_rootless() -> bool:
    return os.geteuid() != 0


def subid_ranges(user: str, uid: int, path: Path) -> list[tuple[int, int]]:
    """(start, count) ranges for ``user`` (by name or numeric uid) in an /etc/subuid-style file."""
    out: list[tuple[int, int]] = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3:
            continue
        if parts[0] not in (user, str(uid)):
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if count > 0:
            out.append((start, count))
    return out


def helpers_available() -> bool:
    import shutil

    return shutil.which("newuidmap") is not None and shutil.which("newgidmap") is not None


def rootless_mapping(*, subuid: Path = Path("/etc/subuid"), subgid: Path = Path("/etc/subgid"),
                     use_subids: bool = True) -> IdMapping:
    """Container root = this user; ids 1.. = the user's subordinate ranges (when usable)."""
    import pwd

    uid, gid = os.geteuid(), os.getegid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    uids = [IdRange(0, uid, 1)]
    gids = [IdRange(0, gid, 1)]
    if use_subids and helpers_available():
        su, sg = subid_ranges(name, uid, subuid), subid_ranges(name, uid, subgid)
        if su and sg:
            nxt = 1
            for start, count in su:
                uids.append(IdRange(nxt, start, count))
                nxt += count
            nxt = 1
            for start, count in sg:
                gids.append(IdRange(nxt, start, count))
                nxt += count
    return IdMapping(tuple(uids), tuple(gids))


def single_map_reason(*, subuid: Path = Path("/etc/subuid"), subgid: Path = Path("/etc/subgid")) -> str:
    """Why rootless_mapping() is a single-id map here (for warnings about dropped owners)."""
    import pwd

    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    if not helpers_available():
        return "newuidmap/newgidmap are not installed (apt-get install uidmap)"
    missing = [str(p) for p in (subuid, subgid) if not subid_ranges(name, uid, p)]
    if missing:
        return (f"user {name} has no subordinate id range in {' and '.join(missing)} "
                f"(e.g. usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {name})")
    return "the user namespace maps a single id"


def write_maps(pid: int, mapping: IdMapping) -> None:
    """Write ``mapping`` for the user namespace of ``pid``. Root writes /proc/PID/{uid,gid}_map;
    a user writes a single-id map itself and anything larger through newuidmap/newgidmap."""
    if os.geteuid() == 0 or mapping.single:
        if os.geteuid() != 0:
            # an unprivileged gid_map needs setgroups denied first (user_namespaces(7))
            _proc_write(pid, "setgroups", "deny")
        _proc_write(pid, "uid_map", _render(mapping.uids))
        _proc_write(pid, "gid_map", _render(mapping.gids))
        return
    import shutil
    import subprocess

    for tool, ranges in (("newuidmap", mapping.uids), ("newgidmap", mapping.gids)):
        exe = shutil.which(tool)
        if exe is None:
            raise UnsupportedHost(f"{tool} not found: cannot map the subordinate id range",
                                  hint="apt-get install uidmap")
        argv = [exe, str(pid)]
        for r in ranges:
            argv += [str(r.container_id), str(r.host_id), str(r.size)]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SandboxError(f"{tool} {pid}: {proc.stderr.strip() or 'failed'}",
                               hint="check /etc/subuid and /etc/subgid for this user")


def _render(ranges: tuple[IdRange, ...]) -> str:
    return "".join(f"{r.container_id} {r.host_id} {r.size}\n" for r in ranges)


def _proc_write(pid: int, name: str, text: str) -> None:
    path = f"/proc/{pid}/{name}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise SandboxError(f"write {path}: {exc.strerror}",
                           hint="user namespaces may be disabled (sysctl user.max_user_namespaces)"
                           ) from None
