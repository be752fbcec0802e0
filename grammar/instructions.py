"""Parse tree -> typed instructions, with the checks of BuildKit's instruction layer (its parser
accepts any keyword and flag; ``instructions`` then rejects unknown instructions, unknown, duplicate
or malformed flags, wrong argument counts, bad HEALTHCHECK options and --mount specs), with BuildKit's
messages and every error at the offending token. Imports grammar.ast/errors/transform (so lark)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from grammar import ast
from grammar.errors import DirectiveError, InstructionError, ParseError, _go_quote
from grammar.transform import HeredocBody, Node, go_to_utf8, heredoc_marker

if TYPE_CHECKING:
    from grammar._scan import Tree

STRING, BOOL, STRINGS = "string", "bool", "strings"
# Flags each instruction accepts (BuildKit's BFlags definitions). Anything else is an error.
FLAGS: dict[str, dict[str, str]] = {
    "from": {"platform": STRING},
    "run": {"mount": STRINGS, "network": STRING, "security": STRING},
    "copy": {"from": STRING, "chown": STRING, "chmod": STRING, "link": BOOL, "parents": BOOL,
             "exclude": STRINGS},
    "add": {"chown": STRING, "chmod": STRING, "link": BOOL, "keep-git-dir": BOOL, "checksum": STRING,
            "exclude": STRINGS},
    "healthcheck": {"interval": STRING, "timeout": STRING, "start-period": STRING,
                    "start-interval": STRING, "retries": STRING},
}
INSTRUCTION_NAMES = tuple(sorted(ast.BY_KIND))
NETWORK_MODES = ("default", "none", "host")
SECURITY_MODES = ("sandbox", "insecure")
MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
SHARING_MODES = ("shared", "private", "locked")
MOUNT_KEYS = ("type", "from", "source", "target", "readonly", "id", "sharing", "required", "mode", "uid",
              "gid", "src", "dst", "destination", "ro", "rw", "readwrite", "size", "env")
_STAGE_NAME = re.compile(r"[a-z][a-z0-9-_.]*\Z")
_ONBUILD_PREFIX = re.compile(r"^[\t\n\f\r ]*[Oo][Nn][Bb][Uu][Ii][Ll][Dd][\t\n\f\r ]*")
_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")
MIN_DURATION_NS = 1_000_000  # HEALTHCHECK intervals below 1ms are rejected (except 0)


def suggest(word: str, choices: tuple[str, ...] | list[str], *, fold: bool = True) -> str | None:
    """The closest choice to ``word`` (BuildKit's util/suggest), or None."""
    key = word.upper() if fold else word
    pool = {c.upper() if fold else c: c for c in choices}
    match = difflib.get_close_matches(key, list(pool), n=1, cutoff=0.6)
    return pool[match[0]] if match else None


class _Context:
    """Where the node being converted is, to build located errors and spans."""

    def __init__(self, tree: Tree, index: int, node: Node) -> None:
        self.tree, self.index, self.node = tree, index, node

    def span(self, offset: int | None = None) -> ast.Span:
        line, column = self.tree.locate(self.index, self.node.keyword_at if offset is None else offset)
        return ast.Span(self.tree.filename, line, column, self.node.end_line)

    def error(self, message: str, *, at: int | None = None, hint: str | None = None) -> ParseError:
        line, column = self.tree.locate(self.index, self.node.keyword_at if at is None else at)
        return InstructionError(message, filename=self.tree.filename, line=line, column=column,
                                end_line=self.node.end_line, excerpt=self.tree.excerpt(line), hint=hint)


# ---- flags ---------------------------------------------------------------------------------

def _flag_owner(name: str) -> str | None:
    owners = [kind.upper() for kind, spec in FLAGS.items() if name in spec]
    return " and ".join(owners) if owners else None


def parse_flags(node: Node, ctx: _Context) -> tuple[tuple[ast.Flag, ...], dict[str, Any]]:
    """BuildKit's BFlags.Parse for ``node``: (the Flag nodes, name -> value)."""
    spec = FLAGS.get(node.kind, {})
    flags: list[ast.Flag] = []
    values: dict[str, Any] = {}
    for word_go, at in zip(node.flags, node.flag_at, strict=True):
        word = go_to_utf8(word_go)
        if not word.startswith("--"):
            raise ctx.error(f"arg should start with -- : {word}", at=at)
        name, sep, value = word[2:].partition("=")
        kind = spec.get(name)
        if kind is None:
            keyword = node.kind.upper()
            guess = suggest(name, list(spec), fold=False) if spec else None
            owner = _flag_owner(name)
            if guess:
                hint = f"did you mean --{guess}?"
            elif owner:
                hint = f"--{name} is a flag of {owner}, not of {keyword}"
            elif spec:
                hint = f"{keyword} accepts " + ", ".join(f"--{n}" for n in spec)
            else:
                hint = f"{keyword} takes no flags"
            raise ctx.error(f"unknown flag: {name}", at=at, hint=hint)
        if name in values and kind != STRINGS:
            raise ctx.error(f"duplicate flag specified: {name}", at=at)
        if kind == BOOL:
            if sep and value == "":
                raise ctx.error(f"missing a value on flag: {name}", at=at)
            if value.lower() in ("true", ""):
                values[name] = True
            elif value.lower() == "false":
                values[name] = False
            else:
                raise ctx.error(f"expecting boolean value for flag {name}, not: {value}", at=at,
                                hint=f"use --{name} or --{name}=false")
        elif not sep:
            raise ctx.error(f"missing a value on flag: {name}", at=at, hint=f"write --{name}=<value>")
        elif kind == STRINGS:
            values.setdefault(name, []).append(value)
        else:
            values[name] = value
        flags.append(ast.Flag(name=name, value=value if sep else None, raw=word, span=ctx.span(at)))
    return tuple(flags), values


# ---- RUN --mount ---------------------------------------------------------------------------

def _parse_bool(value: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(value)


_RAM = re.compile(r"(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?\Z")


def ram_in_bytes(text: str) -> int:
    """docker/go-units RAMInBytes: "64m", "1.5g", "512" (binary multiples)."""
    match = _RAM.match(text)
    if match is None:
        raise ValueError(f"invalid size: '{text}'")
    number = float(match.group(1)) if match.group(1).count(".") <= 1 else None
    if number is None:
        raise ValueError(f"invalid size: '{text}'")
    unit = (match.group(2) or "").lower()
    return int(number * 1024 ** ("kmgtp".index(unit) + 1 if unit else 0))


def csv_fields(line: str) -> list[str]:
    """One CSV record as Go's encoding/csv reads it (strict quotes); raises ValueError."""
    fields: list[str] = []
    i, n = 0, len(line)
    while True:
        if i < n and line[i] == '"':
            i += 1
            field: list[str] = []
            while True:
                end = line.find('"', i)
                if end < 0:
                    raise ValueError(f'parse error on line 1, column {n + 1}: extraneous or missing " in '
                                     'quoted-field')
                field.append(line[i:end])
                i = end + 1
                if i < n and line[i] == '"':
                    field.append('"')
                    i += 1
                    continue
                break
            if i < n and line[i] != ",":
                raise ValueError(f'parse error on line 1, column {i + 1}: extraneous or missing " in '
                                 'quoted-field')
            fields.append("".join(field))
        else:
            end = line.find(",", i)
            end = n if end < 0 else end
            text = line[i:end]
            if '"' in text:
                raise ValueError(f'parse error on line 1, column {i + text.index(chr(34)) + 1}: bare " in '
                                 'non-quoted-field')
            fields.append(text)
            i = end
        if i >= n:
            return fields
        i += 1  # the comma


def parse_mount(spec: str, *, expand: Callable[[str], str] | None = None) -> ast.Mount:
    """A ``--mount`` value, as BuildKit's parseMount reads it; raises ParseError.

    Without ``expand`` (at parse time) values holding ``$`` are kept as written and listed
    in ``Mount.deferred``; the builder calls again with ``expand`` to get the final mount.
    """
    if not spec:
        raise ParseError("failed to parse csv mounts: EOF")
    try:
        fields = csv_fields(spec)
    except ValueError as exc:
        raise ParseError(f"failed to parse csv mounts: {exc}",
                         hint='quote a whole field to use commas in it: "target=/a,b"') from None
    m: dict[str, Any] = {"type": "bind"}
    deferred: list[str] = []
    ro_auto = True
    for item in fields:
        key, sep, value = item.partition("=")
        key = key.lower()
        if not sep:
            if key in ("readonly", "ro"):
                m["readonly"], ro_auto = True, False
            elif key in ("readwrite", "rw"):
                m["readonly"], ro_auto = False, False
            elif key == "required":
                if m["type"] not in ("secret", "ssh") and "type" not in deferred:
                    raise ParseError(f"unexpected key '{key}' for mount type '{m['type']}'")
                m["required"] = True
            else:
                raise ParseError(f"invalid field '{item}' must be a key=value pair",
                                 hint="mount options are key=value pairs separated by commas")
            continue
        if expand is not None:
            value = expand(value)
        elif key == "from" and re.search(r"\$.", value):
            raise ParseError(f"'{key}' doesn't support variable expansion, define alias stage instead")
        elif "$" in value:
            deferred.append(key)
            if key in ("source", "src", "target", "dst", "destination", "id", "env"):
                m[_MOUNT_FIELD[key]] = value
            continue
        _mount_field(m, key, value, item)
        if key in ("readonly", "ro", "readwrite", "rw"):
            ro_auto = False
    return _validate_mount(spec, m, ro_auto, tuple(deferred))


_MOUNT_FIELD = {"source": "source", "src": "source", "target": "target", "dst": "target",
                "destination": "target", "id": "id", "env": "env", "from": "from_"}


def _mount_field(m: dict[str, Any], key: str, value: str, item: str) -> None:
    if key == "type":
        if value.lower() not in MOUNT_TYPES:
            guess = suggest(value, list(MOUNT_TYPES), fold=False)
            raise ParseError(f"unsupported mount type {_go_quote(value)}",
                             hint=f"did you mean {guess}?" if guess else "types: " + ", ".join(MOUNT_TYPES))
        m["type"] = value.lower()
    elif key in _MOUNT_FIELD:
        if key == "env" and m["type"] != "secret":
            raise ParseError(f"unexpected key '{key}' for mount type '{m['type']}'")
        m[_MOUNT_FIELD[key]] = value
    elif key in ("readonly", "ro", "readwrite", "rw", "required"):
        try:
            flag = _parse_bool(value)
        except ValueError:
            raise ParseError(f"invalid value for {key}: {value}") from None
        if key == "required":
            if m["type"] not in ("secret", "ssh"):
                raise ParseError(f"unexpected key '{key}' for mount type '{m['type']}'")
            m["required"] = flag
        else:
            m["readonly"] = flag if key in ("readonly", "ro") else not flag
    elif key == "size":
        if m["type"] != "tmpfs":
            raise ParseError(f"unexpected key '{key}' for mount type '{m['type']}'")
        try:
            m["size"] = ram_in_bytes(value)
        except ValueError:
            raise ParseError(f"invalid value for {key}: {value}") from None
    elif key == "sharing":
        if value.lower() not in SHARING_MODES:
            raise ParseError(f"unsupported sharing value {_go_quote(value)}",
                             hint="sharing is one of " + ", ".join(SHARING_MODES))
        m["sharing"] = value.lower()
    elif key in ("mode", "uid", "gid"):
        try:
            number = int(value, 8 if key == "mode" else 10)
            if value.startswith(("+", "-")) or not 0 <= number < 1 << 32:
                raise ValueError(value)
        except ValueError:
            raise ParseError(f"invalid value {value} for {key}") from None
        m[key] = number
    else:
        guess = suggest(key, list(MOUNT_KEYS), fold=False)
        raise ParseError(f"unexpected key '{key}' in '{item}'",
                         hint=f"did you mean {guess}?" if guess else None)


def _validate_mount(spec: str, m: dict[str, Any], ro_auto: bool, deferred: tuple[str, ...]) -> ast.Mount:
    kind = m["type"]
    if "type" not in deferred:
        if kind not in ("secret", "ssh", "cache"):
            for key in ("mode", "uid", "gid"):
                if m.get(key) is not None:
                    raise ParseError(f"{key} not allowed for {_go_quote(kind)} type mounts")
        if ro_auto:
            m["readonly"] = kind not in ("cache", "tmpfs")
        if kind == "secret":
            if m.get("from_"):
                raise ParseError("secret mount should not have a from")
            if m.get("sharing"):
                raise ParseError("secret mount should not define sharing")
            if not (m.get("source") or m.get("target") or m.get("id")):
                raise ParseError("invalid secret mount. one of source, target required")
            if m.get("source") and m.get("id"):
                raise ParseError("both source and id can't be set")
        if m.get("sharing") and kind != "cache":
            raise ParseError(f"invalid cache sharing set for {kind} mount")
    return ast.Mount(raw=spec, deferred=deferred, **m)


# ---- Go's time.ParseDuration ---------------------------------------------------------------

_UNITS = {"ns": 1, "us": 1000, "\u00b5s": 1000, "\u03bcs": 1000, "ms": 1_000_000, "s": 10**9,
          "m": 60 * 10**9, "h": 3600 * 10**9}


def go_duration(text: str) -> int:
    """Go's time.ParseDuration, in nanoseconds; raises ValueError with Go's message."""
    orig, s = text, text
    negative = False
    if s and s[0] in "+-":
        negative, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    invalid = ValueError(f"time: invalid duration {_go_quote(orig)}")
    if not s:
        raise invalid
    total = 0
    while s:
        if not (s[0] == "." or s[0].isascii() and s[0].isdigit()):
            raise invalid
        i = 0
        while i < len(s) and "0" <= s[i] <= "9":
            i += 1
        whole, pre = int(s[:i] or "0"), i > 0
        s = s[i:]
        frac, scale, post = 0, 1.0, False
        if s.startswith("."):
            s = s[1:]
            i = 0
            while i < len(s) and "0" <= s[i] <= "9":
                i += 1
            digits, s = s[:i], s[i:]
            post = i > 0
            if digits:
                frac, scale = int(digits), float(10 ** len(digits))
        if not pre and not post:
            raise invalid
        i = 0
        while i < len(s) and not (s[i] == "." or "0" <= s[i] <= "9"):
            i += 1
        if i == 0:
            raise ValueError(f"time: missing unit in duration {_go_quote(orig)}")
        unit_name, s = s[:i], s[i:]
        unit = _UNITS.get(unit_name)
        if unit is None:
            raise ValueError(f"time: unknown unit {_go_quote(unit_name)} in duration {_go_quote(orig)}")
        value = whole * unit + (int(float(frac) * (unit / scale)) if frac else 0)
        total += value
        if total > 1 << 63:
            raise invalid
    if total > (1 << 63) - 1 and not negative:
        raise invalid
    return -total if negative else total


def _go_parse_int32(text: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError(f"strconv.ParseInt: parsing {_go_quote(text)}: invalid syntax")
    number = int(text)
    if not -(1 << 31) <= number < 1 << 31:
        raise ValueError(f"strconv.ParseInt: parsing {_go_quote(text)}: value out of range")
    return number


# ---- instructions --------------------------------------------------------------------------

def _heredoc(body: HeredocBody, ctx: _Context, *, name: str | None = None, chomp: bool | None = None,
             expand: bool | None = None, fd: int | None = None) -> ast.Heredoc:
    span = ast.Span(ctx.tree.filename, ctx.node.start_line, 1, body.end_line or ctx.node.end_line)
    return ast.Heredoc(name=body.name if name is None else name, content=body.content,
                       chomp=body.chomp if chomp is None else chomp,
                       expand=body.expand if expand is None else expand,
                       fd=body.fd if fd is None else fd, span=span)


def _command(node: Node) -> ast.CommandLine:
    # BuildKit's handleJSONArgs: exec form as is, shell form one string
    return tuple(node.values) if node.json else " ".join(node.values)


def _sources(node: Node, ctx: _Context, name: str, heredocs: list[HeredocBody]
             ) -> tuple[tuple[str, ...], str, tuple[ast.Heredoc, ...]]:
    if len(node.values) < 2:
        raise ctx.error(f"{name} requires at least two arguments, but only one was provided. "
                        "Destination could not be determined",
                        hint=f"{name} <source>... <destination>")
    *sources, dest = node.values
    if heredoc_marker(dest) is not None:
        raise ctx.error(f"{name} cannot accept a heredoc as a destination", at=node.value_at[-1],
                        hint="put the heredoc before the destination path")
    by_name = {h.name: h for h in heredocs}
    paths: list[str] = []
    inline: list[ast.Heredoc] = []
    for src in sources:
        marker = heredoc_marker(src)
        if marker is None:
            paths.append(src)
            continue
        body = by_name.get(marker.name) or HeredocBody(name=marker.name, fd=marker.fd, chomp=marker.chomp,
                                                       expand=marker.expand)
        inline.append(_heredoc(body, ctx, name=marker.name, chomp=marker.chomp, expand=marker.expand,
                               fd=marker.fd))
    return tuple(paths), dest, tuple(inline)


def _kv_pairs(node: Node, ctx: _Context, name: str) -> tuple[tuple[str, str], ...]:
    if not node.values:
        raise ctx.error(f"{name} requires at least one argument", hint=f"{name} <key>=<value> ...")
    pairs = []
    for i in range(0, len(node.values), 2):
        key, value = node.values[i], node.values[i + 1]
        if not key:
            raise ctx.error(f"{name} names can not be blank", at=node.value_at[i])
        pairs.append((key, value))
    return tuple(pairs)


def _exactly_one(node: Node, ctx: _Context, name: str) -> str:
    if len(node.values) != 1:
        raise ctx.error(f"{name} requires exactly one argument", hint=f"{name} takes one argument")
    return node.values[0]


def convert(node: Node, ctx: _Context, heredocs: list[HeredocBody] | None = None) -> ast.Instruction:
    """One Node -> its typed instruction (raises located ParseErrors)."""
    heredocs = node.heredocs if heredocs is None else heredocs
    kind = node.kind
    if kind not in _CONVERTERS:
        if not node.keyword:
            raise ctx.error("unknown instruction: ", hint="the file ends with a line continuation and "
                            "nothing after it: remove the escape character at the end of the line")
        guess = suggest(node.keyword, list(INSTRUCTION_NAMES))
        raise ctx.error(f"unknown instruction: {node.keyword}",
                        hint=f"did you mean {guess}?" if guess
                        else "instructions: " + " ".join(INSTRUCTION_NAMES))
    if kind == "from":
        _stage_name(node, ctx)  # BuildKit checks the arguments before the flags
    flags, fv = parse_flags(node, ctx)
    common = {"span": ctx.span(), "keyword": node.keyword, "original": node.original, "flags": flags}
    try:
        return _CONVERTERS[kind](node, ctx, fv, common, heredocs)
    except ParseError as exc:
        if exc.line:
            raise
        line, column = ctx.tree.locate(ctx.index, node.flag_at[0] if kind == "run" and node.flag_at
                                       else node.keyword_at)
        raise exc.located(filename=ctx.tree.filename, line=line, column=column, end_line=node.end_line,
                          excerpt=ctx.tree.excerpt(line)) from None


def _stage_name(node: Node, ctx: _Context) -> tuple[str | None, str | None]:
    args = node.values
    if len(args) == 3 and args[1].lower() == "as" and args[1].isascii():
        name = args[2].lower()
        if not _STAGE_NAME.match(name):
            raise ctx.error(f"invalid name for build stage: {_go_quote(args[2])}, name can't start with a "
                            "number or contain symbols", at=node.value_at[2],
                            hint="stage names are [a-z][a-z0-9-_.]*")
        return name, args[1]
    if len(args) != 1:
        hint = "FROM [--platform=<p>] <image> [AS <name>]"
        if "#" in args[1:]:
            hint = "# starts a comment only at the beginning of a line"
        raise ctx.error("FROM requires either one or three arguments", hint=hint)
    return None, None


Converter = Callable[[Node, _Context, dict[str, Any], dict[str, Any], list[HeredocBody]], ast.Instruction]


def _from(node: Node, ctx: _Context, fv: dict[str, Any], common: dict[str, Any],
          heredocs: list[HeredocBody]) -> ast.Instruction:
    name, as_keyword = _stage_name(node, ctx)
    return ast.From(**common, image=node.values[0], stage_name=name, platform=fv.get("platform"),
                    as_keyword=as_keyword)


def _run(node: Node, ctx: _Context, fv: dict[str, Any], common: dict[str, Any],
         heredocs: list[HeredocBody]) -> ast.Instruction:
    mounts = []
    mount_at = [at for word, at in zip(node.flags, node.flag_at, strict=True) if word.startswith("--mount=")]
    for spec, at in zip(fv.get("mount", []), mount_at, strict=False):
        try:
            mounts.append(parse_mount(spec))
        except ParseError as exc:
            line, column = ctx.tree.locate(ctx.index, at)
            raise exc.located(filename=ctx.tree.filename, line=line, column=column, end_line=node.end_line,
                              excerpt=ctx.tree.excerpt(line)) from None
    network = fv.get("network")
    if network is not None and network not in NETWORK_MODES:
        raise ctx.error(f"unsupported network mode {_go_quote(network)}", at=_flag_at(node, "network"),
                        hint="--network is one of " + ", ".join(NETWORK_MODES))
    security = fv.get("security")
    if security is not None and security not in SECURITY_MODES:
        raise ctx.error(f"unsupported security mode {_go_quote(security)}", at=_flag_at(node, "security"),
                        hint="--security is one of " + ", ".join(SECURITY_MODES))
    return ast.Run(**common, command=_command(node), heredocs=tuple(_heredoc(h, ctx) for h in heredocs),
                   mounts=tuple(mounts), network=network, security=security)


def _flag_at(node: Node, name: str) -> int:
    for word, at in zip(node.flags, node.flag_at, strict=True):
        if word[2:].partition("=")[0] == name:
            return at
    return node.keyword_at


def _copy(node: Node, ctx: _Context, fv: dict[str, Any], common: dict[str, Any],
          heredocs: list[HeredocBody]) -> ast.Instruction:
    sources, dest, inline = _sources(node, ctx, "COPY", heredocs)
    return ast.Copy(**common, sources=sources, dest=dest, inline_sources=inline,
                    heredocs=tuple(_heredoc(h, ctx) for h in heredocs), from_=fv.get("from"),
                    chown=fv.get("chown"), chmod=fv.get("chmod"), link=fv.get("link", False),
                    parents=fv.get("parents", False), exclude=tuple(fv.get("exclude", ())),
                    exec_form=node.json)


def _add(node: Node, ctx: _Context, fv: dict[str, Any], common: dict[str, Any],
         heredocs: list[HeredocBody]) -> ast.Instruction:
    sources, dest, inline = _sources(node, ctx, "ADD", heredocs)
    return ast.Add(**common, sources=sources, dest=dest, inline_sources=inline,
                   heredocs=tuple(_heredoc(h, ctx) for h in heredocs), chown=fv.get("chown"),
                   chmod=fv.get("chmod"), link=fv.get("link", False),
                   keep_git_dir=fv.get("keep-git-dir", False), checksum=fv.get("checksum"),
                   exclude=tuple(fv.get("exclude", ())), exec_form=node.json)


def _env(node: Node, ctx: _Context, fv: dict[str, Any], common: dict[str, Any],
         heredocs: list[HeredocBody]) -> ast.Instruction:
    return ast.Env(**common, pairs=_kv_pairs(node, ctx, "ENV"), legacy=node.legacy)


def _label(node: Node, ctx: _Context, fv: dict[str, Any], common: dict[str, Any],
           heredocs: list[HeredocBody]) -> ast.Instruction:
    return ast.Label(**common, pairs=_kv_pairs(node, ctx, "LABEL"), legacy=node.legacy)


def _arg(node: Node, ctx: _Context, fv: dict[str, Any], common: dict[str, Any],
         heredocs: list[HeredocBody]) -> ast.Instruction:
    if not node.values:
        raise ctx.error("ARG requires at least one argument", hint="ARG <name>[=<default>] ...")
    args: list[tuple[str, str | None]] = []
    for word, at in zip(node.values, node.value_at, strict=True):
        key, sep, value = word.partition("=")
        if sep and not key:
            raise ctx.error("ARG names can not be blank", at=at)
        args.append((key, value if sep else None))
    return ast.Arg(**common, args=tuple(args))


def _expose(node: Node, ctx: _Context, fv: dict[str, Any], common: dict[str, Any],
            heredocs: list[HeredocBody]) -> ast.Instruction:
    if not node.values:
        raise ctx.error("EXPOSE requires at least one argument", hint="EXPOSE <port>[/<proto>] ...")
    return ast.Expose(**common, ports=tuple(node.values))


def _volume(node: Node, ctx: _Context, fv: dict[str, Any], common: dict[str, Any],
            heredocs: list[HeredocBody]) -> ast.Instruction:
    if not node.values:
        raise ctx.error("VOLUME requires at least one argument", hint="VOLUME <path> ...")
    paths = []
    for value, at in zip(node.values, node.value_at, strict=True):
        value = value.strip()
        if not value:
            raise ctx.error("VOLUME specified can not be an empty string", at=at)
        paths.append(value)
    return ast.Volume(**common, paths=tuple(paths), exec_form=node.json)


def _user(node: Node, ctx: _Context, fv: dict[str, Any], common: dict[str, Any],
          heredocs: list[HeredocBody]) -> ast.Instruction:
    return ast.User(**common, user=_exactly_one(node, ctx, "USER"))


def _workdir(node: Node, ctx: _Context, fv: dict[str, Any], common: dict[str, Any],
             heredocs: list[HeredocBody]) -> ast.Instruction:
    return ast.Workdir(**common, path=_exactly_one(node, ctx, "WORKDIR"))


def _stopsignal(node: Node, ctx: _Context, fv: dict[str, Any], common: dict[str, Any],
                heredocs: list[HeredocBody]) -> ast.Instruction:
    return ast.StopSignal(**common, signal=_exactly_one(node, ctx, "STOPSIGNAL"))


def _maintainer(node: Node, ctx: _Context, fv: dict[str, Any], common: dict[str, Any],
                heredocs: list[HeredocBody]) -> ast.Instruction:
    return ast.Maintainer(**common, name=_exactly_one(node, ctx, "MAINTAINER"))


def _cmd(node: Node, ctx: _Context, fv: dict[str, Any], common: dict[str, Any],
         heredocs: list[HeredocBody]) -> ast.Instruction:
    return ast.Cmd(**common, command=_command(node))


def _entrypoint(node: Node, ctx: _Context, fv: dict[str, Any], common: dict[str, Any],
                heredocs: list[HeredocBody]) -> ast.Instruction:
    return ast.Entrypoint(**common, command=_command(node))


def _shell(node: Node, ctx: _Context, fv: dict[str, Any], common: dict[str, Any],
           heredocs: list[HeredocBody]) -> ast.Instruction:
    if not node.values:
        raise ctx.error("SHELL requires at least one argument", hint='SHELL ["executable", "parameters"]')
    if not node.json:
        raise ctx.error("SHELL requires the arguments to be in JSON form", at=node.value_at[0],
                        hint='SHELL ["/bin/bash", "-c"]')
    return ast.Shell(**common, shell=tuple(node.values))


def _healthcheck(node: Node, ctx: _Context, fv: dict[str, Any], common: dict[str, Any],
                 heredocs: list[HeredocBody]) -> ast.Instruction:
    if not node.values:
        raise ctx.error("HEALTHCHECK requires at least one argument",
                        hint="HEALTHCHECK [options] CMD <command> | NONE")
    kind = node.values[0].upper()
    args = node.values[1:]
    if kind == "NONE":
        if args:
            raise ctx.error("HEALTHCHECK NONE takes no arguments", at=node.value_at[1])
        return ast.Healthcheck(**common, kind="NONE")
    if kind != "CMD":
        raise ctx.error(f"Unknown type {_go_quote(kind)} in HEALTHCHECK (try CMD)", at=node.value_at[0],
                        hint="HEALTHCHECK CMD <command> or HEALTHCHECK NONE")
    if not args:
        raise ctx.error("Missing command after HEALTHCHECK CMD", at=node.value_at[0])
    durations: dict[str, int | None] = {}
    for flag in ("interval", "timeout", "start-period", "start-interval"):
        text = fv.get(flag)
        if not text:
            durations[flag] = None
            continue
        try:
            ns = go_duration(text)
        except ValueError as exc:
            raise ctx.error(str(exc), at=_flag_at(node, flag),
                            hint="durations look like 30s, 1m30s, 500ms") from None
        if ns and ns < MIN_DURATION_NS:
            raise ctx.error(f"Interval {_go_quote(flag)} cannot be less than 1ms", at=_flag_at(node, flag))
        durations[flag] = ns
    retries = None
    if fv.get("retries"):
        try:
            retries = _go_parse_int32(fv["retries"])
        except ValueError as exc:
            raise ctx.error(str(exc), at=_flag_at(node, "retries")) from None
        if retries < 0:
            raise ctx.error(f"--retries cannot be negative ({retries})", at=_flag_at(node, "retries"))
    command: ast.CommandLine = tuple(args) if node.json else " ".join(args)
    return ast.Healthcheck(**common, kind="CMD" if node.json else "CMD-SHELL", command=command,
                           interval=durations["interval"], timeout=durations["timeout"],
                           start_period=durations["start-period"],
                           start_interval=durations["start-interval"], retries=retries)


def _onbuild(node: Node, ctx: _Context, fv: dict[str, Any], common: dict[str, Any],
             heredocs: list[HeredocBody]) -> ast.Instruction:
    trigger = node.trigger
    if trigger is None:
        raise ctx.error("ONBUILD requires at least one argument", hint="ONBUILD <instruction>")
    if trigger.kind == "onbuild":
        raise ctx.error("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed", at=trigger.keyword_at)
    if trigger.kind in ("from", "maintainer"):
        raise ctx.error(f"{trigger.keyword.upper()} isn't allowed as an ONBUILD trigger",
                        at=trigger.keyword_at)
    expression = _ONBUILD_PREFIX.sub("", node.original, count=1)
    for body in heredocs:
        expression += "\n" + body.content + body.name
    trigger = replace(trigger, original=expression, start_line=node.start_line, end_line=node.end_line)
    typed = convert(trigger, _Context(ctx.tree, ctx.index, trigger), heredocs)
    return ast.Onbuild(**common, trigger=typed, expression=expression)


_CONVERTERS: dict[str, Converter] = {
    "from": _from, "run": _run, "copy": _copy, "add": _add, "env": _env, "label": _label, "arg": _arg,
    "expose": _expose, "volume": _volume, "user": _user, "workdir": _workdir, "stopsignal": _stopsignal,
    "maintainer": _maintainer, "cmd": _cmd, "entrypoint": _entrypoint, "shell": _shell,
    "healthcheck": _healthcheck, "onbuild": _onbuild,
}


def parse_check(value: str, filename: str = "Dockerfile", line: int = 0) -> ast.CheckConfig:
    """``# check=skip=A,B;error=true`` (also ``skip=all``), as BuildKit's linter reads it."""
    skip: set[str] = set()
    skip_all = error = False
    value = value.strip()
    if not value:
        return ast.CheckConfig()
    for part in value.split(";", 2):
        key, sep, val = part.partition("=")
        key = key.strip()
        if not sep:
            raise DirectiveError(f"invalid check option {part!r}", filename=filename, line=line, column=1,
                                 hint="the form is `# check=skip=<rule>[,<rule>];error=<true|false>`")
        if key == "skip":
            val = val.strip()
            if val == "all":
                skip_all = True
            else:
                skip |= {rule.strip() for rule in val.split(",")}
        elif key == "error":
            flag = val.strip()
            if flag not in _TRUE + _FALSE:
                raise DirectiveError(f"failed to parse check option {part!r}", filename=filename, line=line,
                                     column=1, hint="error= takes true or false")
            error = flag in _TRUE
        elif key != "experimental":
            raise DirectiveError(f"invalid check option {key!r}", filename=filename, line=line, column=1,
                                 hint="known options: skip, error, experimental")
    return ast.CheckConfig(skip=frozenset(skip), skip_all=skip_all, error=error)


def directives(tree: Tree) -> ast.Directives:
    """The parser directives of ``tree`` (``# check=`` read here: BuildKit's parser does not)."""
    found, lines = tree.directives, tree.directive_lines
    spans = tuple((name, ast.Span(tree.filename, line, 1, line)) for name, line in lines.items())
    check = ast.CheckConfig()
    if "check" in found:
        try:
            check = parse_check(found["check"], tree.filename, lines["check"])
        except ParseError as exc:
            raise tree.error(exc, lines["check"], 1) from None
    return ast.Directives(escape=found.get("escape", "\\"), syntax=found.get("syntax"), check=check,
                          spans=spans)


def build(tree: Tree) -> tuple[ast.Directives, tuple[ast.Instruction, ...]]:
    """Every Node of ``tree`` as a typed instruction, plus the directives with ``check`` read."""
    out: list[ast.Instruction] = []
    seen_from = False
    for index, node in enumerate(tree.nodes):
        ctx = _Context(tree, index, node)
        instruction = convert(node, ctx)
        if isinstance(instruction, ast.From):
            seen_from = True
        elif not seen_from and not isinstance(instruction, ast.Arg):
            raise ctx.error("no build stage in current context",
                            hint=f"{node.keyword.upper()} must come after a FROM line "
                                 "(only ARG may come before)")
        out.append(instruction)
    return directives(tree), tuple(out)
