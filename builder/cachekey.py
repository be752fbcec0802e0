"""Cache keys as typed, canonical documents (DESIGN C8) and the explanation of a miss: a key is
sha256("pybuild-cache\\0" + canonical_json({schema, kind, parent, op, inputs})), where parent chains
the previous key (or base manifest + platform), op is the normalized instruction (no lines, comments
or proxy vars) and inputs are content digests (never mtimes or owners). Imports registry only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from registry.digest import Digest
from registry.model import canonical_json

# Bump whenever the meaning of a field changes: old records then simply never match.
# 2: --chown NAME gets the user's primary gid, WORKDIR under a numeric USER gets gid = uid,
#    --chmod symbolic per file for every source (runtime.fileops), COPY --link keys.
CACHE_SCHEMA = 2
_DOMAIN = b"pybuild-cache\x00"

# Docker's predefined proxy args: usable in RUN, never in history or cache keys.
PROXY_ARGS = frozenset({
    "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
    "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
})


@dataclass(frozen=True, slots=True)
class KeyDoc:
    """The document a step key is the hash of. ``detail`` is kept for explanations only
    (e.g. the per-file listing behind a directory's tree digest) and is not hashed."""

    kind: str
    parent: str
    op: Mapping[str, Any]
    inputs: Mapping[str, str] = field(default_factory=dict)
    detail: Mapping[str, Any] = field(default_factory=dict)

    def hashed(self) -> dict[str, Any]:
        return {"schema": CACHE_SCHEMA, "kind": self.kind, "parent": self.parent,
                "op": dict(self.op), "inputs": dict(sorted(self.inputs.items()))}

    def canonical(self) -> bytes:
        return canonical_json(self.hashed())

    def digest(self) -> Digest:
        return Digest.of(_DOMAIN + self.canonical())

    def to_dict(self) -> dict[str, Any]:
        d = self.hashed()
        if self.detail:
            d["detail"] = dict(self.detail)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KeyDoc:
        return cls(str(d.get("kind", "")), str(d.get("parent", "")), dict(d.get("op") or {}),
                   dict(d.get("inputs") or {}), dict(d.get("detail") or {}))


def base_doc(image: str, platform: str) -> KeyDoc:
    """The root of a stage's chain: the base image's manifest digest (or 'scratch')."""
    return KeyDoc("base", "", {"image": image, "platform": platform})


def link_key(parent: Digest | str, step_key: Digest | str) -> Digest:
    """The stage's key after a ``COPY --link`` step. The step's own key (its layer) leaves the
    parent out, so the layer is reused on any base; the steps after it must still depend on
    both, as a BuildKit merge of the base and the linked layer does."""
    return KeyDoc("link", str(parent), {"layer": str(step_key)}).digest()


@dataclass(frozen=True, slots=True)
class Reason:
    """One thing that differs between a miss and the closest earlier key document."""

    what: str      # parent | base | file | arg | op | source | instruction
    subject: str   # the file path, the arg name, the field...
    old: str = ""
    new: str = ""

    def __str__(self) -> str:
        if self.what == "file":
            if not self.old:
                return f"file {self.subject!r} added"
            if not self.new:
                return f"file {self.subject!r} removed"
            return f"file {self.subject!r} changed ({self.old} -> {self.new})"
        if self.what == "arg":
            return f"build arg {self.subject} changed ({self.old or '(unset)'} -> {self.new or '(unset)'})"
        if self.what == "base":
            return f"base image changed ({self.old} -> {self.new})"
        if self.what == "parent":
            return "parent step changed" + (f" ({self.subject})" if self.subject else "")
        if self.what == "instruction":
            return f"instruction changed ({self.old} -> {self.new})"
        return f"{self.what} {self.subject} changed ({self.old} -> {self.new})"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else canonical_json(value).decode()
    if text.startswith("sha256:") and len(text) == 71:
        return text[7:19]
    return text if len(text) <= 60 else text[:57] + "..."


def _describe_file(rec: str) -> str:
    """A listing record 'kind mode digest-or-target' rendered briefly."""
    parts = rec.split(" ", 2)
    if len(parts) == 3 and parts[2].startswith("sha256:"):
        return f"{parts[0]} {parts[1]} {parts[2][7:19]}"
    return rec


def _file_changes(old: Mapping[str, str], new: Mapping[str, str], prefix: str) -> list[Reason]:
    out: list[Reason] = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        path = name if name != "." else prefix
        if a is None or b is None:
            out.append(Reason("file", path, _describe_file(a or ""), _describe_file(b or "")))
            continue
        akind, amode, arest = (a.split(" ", 2) + ["", ""])[:3]
        bkind, bmode, brest = (b.split(" ", 2) + ["", ""])[:3]
        if akind != bkind:
            out.append(Reason("file", path, f"a {akind}", f"a {bkind}"))
        elif arest != brest:
            what = "content" if akind == "file" else "target"
            out.append(Reason("file", path, f"{what} {_short(arest)}", f"{what} {_short(brest)}"))
        if amode != bmode:
            out.append(Reason("file", path, f"mode {amode}", f"mode {bmode}"))
    return out


def explain(old: KeyDoc | None, new: KeyDoc) -> list[Reason]:
    """Why ``new`` missed, compared with ``old`` (the same step of the closest earlier build)."""
    if old is None:
        return [Reason("op", "history", "", "no earlier build of this step")]
    if old.kind != new.kind:
        return [Reason("instruction", "kind", old.kind, new.kind)]
    reasons: list[Reason] = []
    old_text, new_text = old.op.get("text"), new.op.get("text")
    if old_text != new_text and old_text is not None:
        reasons.append(Reason("instruction", "text", _short(old_text), _short(new_text)))
    old_args = dict(old.op.get("args") or {})
    new_args = dict(new.op.get("args") or {})
    for name in sorted(set(old_args) | set(new_args)):
        if old_args.get(name) != new_args.get(name):
            reasons.append(Reason("arg", name, str(old_args.get(name) or ""), str(new_args.get(name) or "")))
    for name in sorted(set(old.op) | set(new.op)):
        if name in ("args", "text"):
            continue
        if old.op.get(name) != new.op.get(name):
            if name == "env" and reasons and all(r.what == "arg" for r in reasons):
                continue  # the env difference is the build arg already named
            reasons.append(Reason("op", name, _short(old.op.get(name)), _short(new.op.get(name))))
    for name in sorted(set(old.inputs) | set(new.inputs)):
        a, b = old.inputs.get(name), new.inputs.get(name)
        if a == b:
            continue
        old_list = (old.detail.get("files") or {}).get(name)
        new_list = (new.detail.get("files") or {}).get(name)
        if isinstance(old_list, dict) and isinstance(new_list, dict):
            changes = _file_changes(old_list, new_list, name)
            if changes:
                reasons.extend(changes)
                continue
        reasons.append(Reason("source", name, _short(a or "(none)"), _short(b or "(none)")))
    if old.parent != new.parent and not reasons:
        if new.kind == "base" or old.op.get("image") != new.op.get("image"):
            reasons.append(Reason("base", "image", _short(old.op.get("image")), _short(new.op.get("image"))))
        else:
            reasons.append(Reason("parent", ""))
    if new.kind == "base" and old.op != new.op and not any(r.what == "base" for r in reasons):
        reasons = [Reason("base", "image", _short(old.op.get("image")), _short(new.op.get("image")))]
    return reasons
