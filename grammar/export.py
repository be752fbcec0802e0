"""Printing Dockerfiles: the stable golden dump of the typed AST, and BuildKit's parse tree
as JSON records (what ``pybuild parse --json`` prints, one object per instruction, the
fields of ../shared/conformance/dockerfile/*.expected.json). Stdlib only; grammar.ast is
imported only by the dump.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grammar import ast
    from grammar._scan import Tree
    from grammar.transform import Node

# fields printed on their own lines (or not at all) rather than as name=value
_NESTED = frozenset({"span", "keyword", "original", "flags", "heredocs", "inline_sources", "mounts",
                     "trigger"})


def _fields(obj: Any, skip: frozenset[str] = frozenset()) -> str:
    return " ".join(f"{f.name}={getattr(obj, f.name)!r}" for f in fields(obj) if f.name not in skip)


def _span(span: ast.Span) -> str:
    return f"{span.line}:{span.column}-{span.end_line}"


def _instruction(ins: ast.Instruction, indent: str) -> list[str]:
    from grammar import ast  # not at module scope: the JSON export needs no typed AST

    head = f"{indent}{_span(ins.span)} {ins.KIND}"
    if ins.keyword != ins.KIND:
        head += f" keyword={ins.keyword!r}"
    if ins.flags:
        head += " flags=" + repr([f.raw for f in ins.flags])
    rest = _fields(ins, _NESTED)
    out = [head + (" " + rest if rest else "")]
    for name in ("mounts", "inline_sources", "heredocs"):
        for item in getattr(ins, name, ()):
            label = name.rstrip("s") if name != "inline_sources" else "inline_source"
            extra = f" span={_span(item.span)}" if isinstance(item, ast.Heredoc) else ""
            out.append(f"{indent}    {label} {_fields(item, frozenset({'span'}))}{extra}")
    if isinstance(ins, ast.Onbuild):
        out.append(f"{indent}    trigger:")
        out += _instruction(ins.trigger, indent + "        ")
    return out


def dump(df: ast.Dockerfile, *, warnings: bool = True) -> str:
    """A stable, line-oriented rendering of the typed AST (the testdata/parser golden form)."""
    d = df.directives
    check = f"skip={sorted(d.check.skip)!r} skip_all={d.check.skip_all} error={d.check.error}"
    out = [f"# {df.filename}: escape={d.escape!r} syntax={d.syntax!r} check=({check})"]
    for ins in df.instructions:
        out += _instruction(ins, "")
    if warnings:
        for w in df.warnings:
            out.append(f"! {_span(w.span)} {w.rule}: {w.message}")
    return "\n".join(out) + "\n"


def _c_string(text: str) -> str:
    # the reference oracle passes strings through C: a NUL ends them
    return text.split("\0", 1)[0] if "\0" in text else text


def _c_field(text: str) -> str | None:
    # ...and reports an empty keyword or line as null (only a dangling continuation at the
    # end of a file makes one)
    return _c_string(text) or None


def record(node: Node) -> dict[str, Any]:
    """One instruction as BuildKit's parse tree (the conformance oracle's JSON shape)."""
    view = node
    sub_cmd = None
    heredocs: list[dict[str, Any]] = []
    original = node.original
    if node.kind == "onbuild":
        # the oracle reports the trigger's value and JSON-ness, ONBUILD's own flags, and no
        # heredocs (their bodies are still consumed, see end_line)
        value = node.trigger.values if node.trigger is not None else []
        is_json = node.trigger.json if node.trigger is not None else False
        sub_cmd = node.trigger.keyword if node.trigger is not None else None
        view = node.trigger or node
    else:
        value, is_json = node.values, node.json
        heredocs = [{"name": _c_string(h.name), "file_descriptor": h.fd, "content": _c_string(h.content)}
                    for h in node.heredocs]
        if node.heredocs:
            original += "\n" + "".join(h.content + h.name + "\n" for h in node.heredocs)
    del view
    return {
        "cmd": _c_field(node.keyword),
        "sub_cmd": _c_string(sub_cmd) if sub_cmd is not None else None,
        "json": is_json,
        "original": _c_field(original),
        "start_line": node.start_line,
        "end_line": node.end_line,
        "flags": [_c_string(f) for f in node.flags],
        "value": [_c_string(v) for v in value],
        "heredocs": heredocs,
    }


def records(tree: Tree) -> list[dict[str, Any]]:
    return [record(node) for node in tree.nodes]
