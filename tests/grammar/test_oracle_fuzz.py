"""Differential fuzzing against BuildKit v0.12.5's own parser (opt-in: needs the oracle).

Random Dockerfiles full of edge cases (quotes, escapes, both escape tokens, JSON that is and
is not JSON, heredocs, continuations with comments and blank lines, unicode blanks, CRLF,
BOM, directives) are parsed by the oracle (PyPI ``dockerfile==3.4.0``, which embeds BuildKit
v0.12.5, see ../shared/conformance/dockerfile/README.md) and by ``grammar.to_buildkit_json``
with the four documented post-v0.12.5 behaviours switched back to v0.12.5's: then every
answer must be identical. That is what shows the deviations from v0.12.5 are exactly those.

    python3 -m venv /tmp/oracle && /tmp/oracle/bin/pip install dockerfile==3.4.0
    PYBUILD_ORACLE_PYTHON=/tmp/oracle/bin/python .venv/bin/pytest tests/grammar/test_oracle_fuzz.py
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
from typing import Any

import pytest

import grammar
from grammar import _scan, transform, words
from grammar.errors import ParseError

ORACLE = os.environ.get("PYBUILD_ORACLE_PYTHON", "")
CASES = int(os.environ.get("PYBUILD_FUZZ_CASES", "400"))
ORACLE_SCRIPT = """
import json, sys, dockerfile
def conv(c):
    return {"cmd": c.cmd, "sub_cmd": c.sub_cmd, "json": c.json, "original": c.original,
            "start_line": c.start_line, "end_line": c.end_line, "flags": list(c.flags),
            "value": list(c.value), "heredocs": [{"name": h.name, "file_descriptor": h.file_descriptor,
                                                  "content": h.content} for h in c.heredocs]}
out = []
for text in json.load(sys.stdin):
    try:
        out.append([conv(c) for c in dockerfile.parse_string(text)])
    except dockerfile.GoParseError as e:
        out.append({"error": str(e)})
    except UnicodeDecodeError:  # the oracle cannot return some byte-split strings
        out.append(None)
print(json.dumps(out, ensure_ascii=False))
"""

KEYWORDS = ["FROM", "RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME", "HEALTHCHECK", "ENV",
            "LABEL", "ARG", "EXPOSE", "USER", "WORKDIR", "STOPSIGNAL", "MAINTAINER", "ONBUILD", "FOOBAR"]
ATOMS = ["a", "b=c", '"q u"', "'s q'", "\\", "\\\\", "`", "$X", "${Y:-z}", "--f", "--g=h", "--", '--x="1 2"',
         "--y='a b'", "--z=\\ ", "[", "]", '["a"]', '[ "a", "b" ]', '["a", 1]', "[]", "[[]]", '{"a":1}',
         '["\\u00e9"]', "<<EOF", "<<-EOF", "<<'EOF'", '<<"E F"', "2<<X", "cat<<EOF", "<<EOF>/x", "é",
         "\u00a0", "\t", "#", "x#y", "=", "a=", "=b", 'k="v w"', "\\\"", "'", '"', "ü=1", "NONE", "CMD",
         "AS", "as", "\u3000", "\v", "\f", "a\\ b", '--""', "--'x'y", "--mount=type=cache,target=/x"]


def generate(rng: random.Random) -> str:
    lines: list[str] = []
    escape = "\\"
    if rng.random() < 0.2:
        escape = rng.choice(["\\", "`"])
        lines.append(rng.choice(["# escape=", "#escape = ", "# ESCAPE="]) + escape)
    if rng.random() < 0.1:
        lines.append("# syntax=docker/dockerfile:1")
    for _ in range(rng.randint(1, 8)):
        if rng.random() < 0.1:
            lines.append(rng.choice(["", "# comment", "   # indented", "\t", escape]))
        keyword = rng.choice(KEYWORDS)
        keyword = rng.choice([keyword, keyword.lower(), keyword.capitalize()])
        parts = [keyword]
        if keyword.upper() == "ONBUILD" and rng.random() < 0.7:
            parts.append(rng.choice(KEYWORDS))
        parts += [rng.choice(ATOMS) for _ in range(rng.randint(0, 5))]
        line = parts[0] + "".join((rng.choice([" ", "  ", "\t"]) if rng.random() < 0.9 else "") + p
                                  for p in parts[1:])
        if rng.random() < 0.25:
            lines.append(line + rng.choice([" " + escape, escape, escape + "  "]))
            extra = ["", "# c", "  more", "\tx" + escape, "y"]
            lines += [rng.choice(extra) for _ in range(rng.randint(0, 2))]
            lines.append("z")
        else:
            lines.append(line)
        for name in ("EOF", "X", "E F"):
            if name in line and "<<" in line and rng.random() < 0.7:
                lines += rng.choice([["body", name], ["\tb", "\t" + name], ["x", name + " "], []])
    newline = "\r\n" if rng.random() < 0.1 else "\n"
    text = newline.join(lines) + (newline if rng.random() < 0.8 else "")
    return ("\ufeff" + text) if rng.random() < 0.05 else text


def _v0125_parse_line(original: Any) -> Any:
    """parse_line with v0.12.5's JSON-prefix decoding and backslash-only flag escapes."""
    decoder = json.JSONDecoder()

    def parse_line(logical: str, escape: str) -> transform.Node:
        node = original(logical, escape)
        text = logical.strip(words.GO_SPACES)
        if escape == "`" and text:
            rebuilt, moves, levels = transform._strip_go_flags(text, "\\")
            parser = transform._parser()
            try:
                item = parser.parse(rebuilt, start="start_bt")
            except Exception:  # noqa: BLE001 - lark's UnexpectedInput: shell form
                item = parser.parse(rebuilt, start="start_shell_bt")
            rebuilt_node = transform._build(item, rebuilt, escape, 0)
            transform._move(rebuilt_node, moves)
            level: transform.Node | None = rebuilt_node
            for flags, offsets in levels:
                if level is None:
                    break
                level.flags, level.flag_at = flags, offsets
                level = level.trigger
            node = rebuilt_node
        view = node.trigger if node.kind == "onbuild" and node.trigger is not None else node
        kinds = ("run", "cmd", "entrypoint", "shell", "copy", "add", "volume", "healthcheck")
        if view.kind in kinds and not view.json and view.values:
            if view.kind == "healthcheck":
                if len(view.values) < 2:
                    return node
                body = view.values[1]
            else:
                body = logical[view.value_at[0]:]  # the argument text, as BuildKit's parser sees it
            body = body.lstrip(words.GO_SPACES)
            if body.startswith("["):
                try:
                    value, _ = decoder.raw_decode(body)
                except ValueError:
                    return node
                if isinstance(value, list):
                    if any(not isinstance(v, str) for v in value):
                        raise ParseError(transform.ERR_NOT_STRINGS)
                    view.values = ([view.values[0]] if view.kind == "healthcheck" else []) + value
                    view.json = True
        return node

    return parse_line


@pytest.mark.skipif(not ORACLE, reason="set PYBUILD_ORACLE_PYTHON to a python with `dockerfile==3.4.0` "
                                       "(BuildKit v0.12.5's parser) to run the differential fuzz test")
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_same_parse_tree_as_buildkit_v0125(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    texts = [generate(rng) for _ in range(CASES)]
    proc = subprocess.run([ORACLE, "-c", ORACLE_SCRIPT], input=json.dumps(texts), capture_output=True,
                          text=True, check=True)
    answers = json.loads(proc.stdout)
    # switch the four documented post-v0.12.5 changes back (see SOURCES.md / the report)
    monkeypatch.setattr(transform, "_HEREDOC_WORD", re.compile(r"([0-9]*)<<(-?)([^<]*)\Z"))
    monkeypatch.setattr(words, "_HEREDOC_BLANKS", "")
    monkeypatch.setattr(_scan, "KNOWN_DIRECTIVES", ("syntax", "escape"))
    monkeypatch.setattr(_scan, "parse_line", _v0125_parse_line(transform.parse_line))
    mismatches = []
    for text, expected in zip(texts, answers, strict=True):
        if expected is None:
            continue
        try:
            got: Any = grammar.to_buildkit_json(text)
        except ParseError as exc:
            got = {"error": exc.message}
        if json.dumps(got, sort_keys=True) != json.dumps(expected, sort_keys=True):
            mismatches.append((text, expected, got))
    assert not mismatches, json.dumps(mismatches[:3], ensure_ascii=False, indent=1)
