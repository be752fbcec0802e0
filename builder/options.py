"""Build options: the values of `pybuild build`'s flags, parsed and checked (docker's syntax).

Pure parsing (no I/O except reading --build-arg-file and a Dockerfile from stdin); errors are
UsageError (exit 125, as docker does for bad flag values). Stdlib + registry.model only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from builder.errors import UsageError

if TYPE_CHECKING:
    from registry.compression import Codec


@dataclass(frozen=True, slots=True)
class SecretSource:
    id: str
    src: str | None = None      # a file
    env: str | None = None      # an environment variable

    def read(self) -> bytes:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise UsageError(f"secret {self.id!r}: environment variable {self.env} is not set")
            return value.encode()
        assert self.src is not None
        try:
            return Path(self.src).expanduser().read_bytes()
        except OSError as exc:
            raise UsageError(f"secret {self.id!r}: cannot read {self.src}: {exc.strerror}") from None


@dataclass(frozen=True, slots=True)
class OutputSpec:
    type: str                   # image | oci | docker | tar | local
    dest: str | None = None
    attrs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CacheSpec:
    type: str                   # registry
    ref: str
    mode: str = "min"           # min | max (for --cache-to)
    attrs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BuildOptions:
    context_dir: Path
    dockerfile: Path | None = None           # None: <context>/Dockerfile
    dockerfile_text: str | None = None       # from stdin (`-f -`)
    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    platform: str | None = None
    secrets: Mapping[str, SecretSource] = field(default_factory=dict)
    network: str = "default"
    no_cache: bool = False
    no_cache_filter: frozenset[str] = frozenset()
    pull: bool = False
    explain: bool = False
    build_contexts: Mapping[str, str] = field(default_factory=dict)
    cache_from: tuple[CacheSpec, ...] = ()
    cache_to: tuple[CacheSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    push: bool = False
    compression: Codec = "gzip"

    @property
    def dockerfile_path(self) -> Path:
        return self.dockerfile if self.dockerfile is not None else self.context_dir / "Dockerfile"


def parse_csv_kv(text: str, *, what: str) -> dict[str, str]:
    """'a=b,c=d' → {'a': 'b', 'c': 'd'} (docker's --output/--secret/--cache-* syntax)."""
    out: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise UsageError(f"invalid {what} {text!r}: {part!r} is not key=value")
        out[key.strip().lower()] = value.strip()
    return out


def parse_build_args(items: Iterable[str], files: Iterable[str] = (),
                     environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """--build-arg-file entries first, then --build-arg (later wins); 'KEY' alone reads the
    environment and is dropped when unset (docker's behaviour)."""
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for path in files:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise UsageError(f"--build-arg-file {path}: {exc.strerror}") from None
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            key = key.strip()
            if not key:
                raise UsageError(f"--build-arg-file {path}:{lineno}: missing name")
            if sep:
                out[key] = value
            elif key in env:
                out[key] = env[key]
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise UsageError(f"invalid --build-arg {item!r}: want KEY=VALUE")
        if sep:
            out[key] = value
        elif key in env:
            out[key] = env[key]
    return out


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise UsageError(f"invalid --label {item!r}: want KEY=VALUE")
        out[key] = value
    return out


def parse_secret(text: str) -> SecretSource:
    kv = parse_csv_kv(text, what="--secret")
    sid = kv.get("id")
    if not sid:
        raise UsageError(f"invalid --secret {text!r}: missing id=",
                         hint="e.g. --secret id=token,src=./token.txt")
    kind = kv.get("type")
    if "env" in kv or kind == "env":
        return SecretSource(sid, env=kv.get("env") or kv.get("src") or sid)
    src = kv.get("src") or kv.get("source")
    if src is None:
        # docker: with no src, the id names an env var if it exists, else a file
        return SecretSource(sid, env=sid) if sid in os.environ else SecretSource(sid, src=sid)
    return SecretSource(sid, src=src)


def parse_output(text: str) -> OutputSpec:
    if "=" not in text and "," not in text:
        return OutputSpec("local", text) if text != "-" else OutputSpec("tar", "-")
    kv = parse_csv_kv(text, what="--output")
    kind = kv.pop("type", "local")
    if kind not in ("image", "registry", "oci", "docker", "tar", "local"):
        raise UsageError(f"--output type {kind!r} is not supported",
                         hint="use type=oci|docker|tar|local,dest=PATH or type=image")
    dest = kv.pop("dest", None)
    if kind in ("oci", "docker", "tar", "local") and not dest:
        raise UsageError(f"--output type={kind} needs dest=PATH")
    return OutputSpec(kind, dest, kv)


def parse_cache(text: str, *, flag: str) -> CacheSpec:
    if "=" not in text:
        return CacheSpec("registry", text)
    kv = parse_csv_kv(text, what=flag)
    kind = kv.pop("type", "registry")
    if kind != "registry":
        raise UsageError(f"{flag} type {kind!r} is not supported", hint="use type=registry,ref=REF")
    ref = kv.pop("ref", "")
    if not ref:
        raise UsageError(f"{flag} {text!r}: missing ref=")
    mode = kv.pop("mode", "min")
    if mode not in ("min", "max"):
        raise UsageError(f"{flag} mode {mode!r}: want min or max")
    return CacheSpec(kind, ref, mode, kv)


def parse_build_contexts(items: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise UsageError(f"invalid --build-context {item!r}: want NAME=PATH or NAME=docker-image://REF")
        out[name] = value
    return out


def check_platform(platform: str | None) -> str | None:
    """Only the host platform can be built (no emulation); others are a clear error."""
    if not platform:
        return None
    from registry.imagebuild import host_arch
    from registry.model import Platform

    host = f"linux/{host_arch()}"
    wanted = []
    for item in platform.split(","):
        try:
            p = Platform.parse(item)
        except ValueError as exc:
            raise UsageError(f"--platform: {exc}") from None
        wanted.append(p)
    for p in wanted:
        if p.os != "linux" or p.architecture != host_arch():
            raise UsageError(f"--platform {p}: only the host platform ({host}) can be built",
                             hint="cross-platform builds need emulation, which pybuild does not do yet")
    return str(wanted[0])


def make_options(*, context_dir: str, dockerfile: str | None, tags: Sequence[str] = (),
                 build_args: Sequence[str] = (), build_arg_files: Sequence[str] = (),
                 target: str | None = None, labels: Sequence[str] = (), platform: str | None = None,
                 secrets: Sequence[str] = (), network: str = "default", no_cache: bool = False,
                 no_cache_filter: Sequence[str] = (), pull: bool = False, explain: bool = False,
                 build_contexts: Sequence[str] = (), cache_from: Sequence[str] = (),
                 cache_to: Sequence[str] = (), outputs: Sequence[str] = (), push: bool = False,
                 compression: Codec = "gzip", stdin: BinaryIO | None = None) -> BuildOptions:
    from registry.errors import InvalidReference
    from registry.reference import parse_reference

    ctx = Path(context_dir)
    if context_dir.startswith(("http://", "https://", "git@", "git://")):
        raise UsageError(f"remote build contexts ({context_dir}) are not supported",
                         hint="clone or download it and pass the directory")
    text = None
    df: Path | None = None
    if dockerfile == "-":
        if stdin is None:
            raise UsageError("-f -: no Dockerfile on stdin")
        text = stdin.read().decode("utf-8", "replace")
    elif dockerfile:
        df = Path(dockerfile)
    names = []
    for tag in tags:
        try:
            names.append(str(parse_reference(tag)))
        except InvalidReference as exc:
            raise UsageError(f"invalid tag {tag!r}: {exc}") from None
    sec: dict[str, SecretSource] = {}
    for s in secrets:
        src = parse_secret(s)
        sec[src.id] = src
    return BuildOptions(
        context_dir=ctx, dockerfile=df, dockerfile_text=text, tags=tuple(names),
        build_args=parse_build_args(build_args, build_arg_files), target=target or None,
        labels=parse_labels(labels), platform=check_platform(platform), secrets=sec,
        network=network, no_cache=no_cache, no_cache_filter=frozenset(no_cache_filter), pull=pull,
        explain=explain, build_contexts=parse_build_contexts(build_contexts),
        cache_from=tuple(parse_cache(c, flag="--cache-from") for c in cache_from),
        cache_to=tuple(parse_cache(c, flag="--cache-to") for c in cache_to),
        outputs=tuple(parse_output(o) for o in outputs), push=push, compression=compression)
