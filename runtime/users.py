"""Users and groups of an image: /etc/passwd and /etc/group read inside a root (symlinks
resolved in the root, size-capped, regular files only), and docker's rules for USER / ``-u``
(runc's GetExecUser) and BuildKit's for COPY ``--chown`` / WORKDIR owners (resolve_chown).
Imports: stdlib, runtime.pathsafe/errors.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runtime import pathsafe
from runtime.errors import SandboxError

MAX_ID = (1 << 31) - 1


class UnknownUser(SandboxError):
    """A user or group name the image does not define."""

    exit_code = 1

    def __init__(self, what: str, name: str, why: str = "no matching entries") -> None:
        super().__init__(f"unable to find {what} {name}: {why} in the image's /etc/"
                         f"{'passwd' if what == 'user' else 'group'}",
                         hint="use a numeric id, or create the account in an earlier step")
        self.what, self.name = what, name


@dataclass(frozen=True, slots=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


@dataclass(frozen=True, slots=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ExecUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"
    name: str | None = None


def _int(text: str) -> int | None:
    text = text.strip()
    if not text.isdigit():
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def _records(data: bytes, fields: int) -> Iterator[list[str]]:
    """The ':'-separated records of a passwd/group file with at least ``fields`` fields and a
    name; blank, comment and NIS ('+'/'-') lines are skipped."""
    for raw in data.decode("utf-8", "surrogateescape").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "+", "-")):
            continue
        parts = line.split(":")
        if len(parts) >= fields and parts[0]:
            yield parts


def parse_passwd(data: bytes) -> list[PasswdEntry]:
    """Entries of a passwd file; malformed lines (and NIS '+'/'-' lines) are skipped."""
    out = []
    for parts in _records(data, 4):
        uid, gid = _int(parts[2]), _int(parts[3])
        if uid is None or gid is None:
            continue
        home = parts[5] if len(parts) > 5 else ""
        shell = parts[6] if len(parts) > 6 else ""
        out.append(PasswdEntry(parts[0], uid, gid, home, shell))
    return out


def parse_group(data: bytes) -> list[GroupEntry]:
    """Entries of a group file; malformed lines (and NIS '+'/'-' lines) are skipped."""
    out = []
    for parts in _records(data, 3):
        gid = _int(parts[2])
        if gid is None:
            continue
        members = tuple(m.strip() for m in parts[3].split(",") if m.strip()) if len(parts) > 3 else ()
        out.append(GroupEntry(parts[0], gid, members))
    return out


def read_passwd(root: str | os.PathLike[str] | int | None) -> list[PasswdEntry] | None:
    """The image's /etc/passwd (None when absent), read safely inside ``root``."""
    if root is None:
        return None
    data = pathsafe.read_file(root if isinstance(root, int) else Path(root), "etc/passwd")
    return None if data is None else parse_passwd(data)


def read_group(root: str | os.PathLike[str] | int | None) -> list[GroupEntry] | None:
    if root is None:
        return None
    data = pathsafe.read_file(root if isinstance(root, int) else Path(root), "etc/group")
    return None if data is None else parse_group(data)


def _split(spec: str) -> tuple[str, str]:
    user, _, group = spec.strip().partition(":")
    return user.strip(), group.strip()


def resolve_user(root: str | os.PathLike[str] | int | None, spec: str) -> ExecUser:
    """Docker/runc semantics for USER and ``run -u`` (see the module docstring).

    Raises UnknownUser naming the user or group that is not in the image.
    """
    passwd = read_passwd(root)
    groups = read_group(root)
    user_arg, group_arg = _split(spec)
    uid_arg, gid_arg = _int(user_arg), _int(group_arg)
    result_uid, result_gid, home, name = 0, 0, "/", None
    matched: PasswdEntry | None = None
    for entry in passwd or ():
        if (not user_arg and entry.uid == 0) or (uid_arg is not None and entry.uid == uid_arg) or (
                uid_arg is None and user_arg and entry.name == user_arg):
            matched = entry
            break
    if matched is not None:
        result_uid, result_gid, home, name = matched.uid, matched.gid, matched.home or "/", matched.name
    elif user_arg:
        if uid_arg is None:
            raise UnknownUser("user", user_arg)
        result_uid = uid_arg
    extra: tuple[int, ...] = ()
    if group_arg:
        found = None
        for g in groups or ():
            if (gid_arg is not None and g.gid == gid_arg) or (gid_arg is None and g.name == group_arg):
                found = g
                break
        if found is not None:
            result_gid = found.gid
        elif gid_arg is not None:
            result_gid = gid_arg
        else:
            raise UnknownUser("group", group_arg)
    elif name is not None:
        extra = tuple(g.gid for g in groups or () if name in g.members)
    return ExecUser(result_uid, result_gid, extra, home, name)


def resolve_chown(root: str | os.PathLike[str] | int | None, spec: str, *,
                  missing: str = "error") -> tuple[int, int]:
    """COPY/ADD ``--chown`` and WORKDIR under USER -> (uid, gid), with BuildKit's rules: a
    numeric user without a group gets gid = uid; a user name gets its passwd entry's primary
    group; ``root`` is 0 even without an /etc/passwd; a group is a gid or a name in
    /etc/group. Names are read inside ``root`` (symlinks resolved in the root).

    ``missing="error"`` raises UnknownUser for a name the image does not define (COPY);
    ``missing="root"`` keeps BuildKit's WORKDIR fallback: an unknown user is 0:0 and an
    unknown group keeps the user's gid.
    """
    user_arg, group_arg = _split(spec)
    if not user_arg:
        raise UnknownUser("user", spec, "empty user")
    uid = _int(user_arg)
    gid: int | None = uid
    if uid is None:
        entry = next((e for e in read_passwd(root) or () if e.name == user_arg), None)
        if entry is not None:
            uid, gid = entry.uid, entry.gid
        elif user_arg == "root" or missing == "root":
            uid, gid = 0, 0
        else:
            raise UnknownUser("user", user_arg)
    assert gid is not None
    if not group_arg:
        return uid, gid
    named = _int(group_arg)
    if named is not None:
        return uid, named
    g = next((g for g in read_group(root) or () if g.name == group_arg), None)
    if g is not None:
        return uid, g.gid
    if group_arg == "root":
        return uid, 0
    if missing == "root":
        return uid, gid
    raise UnknownUser("group", group_arg)
