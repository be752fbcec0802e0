"""`pybuild parse [--json] PATH`: how pybuild reads a Dockerfile. Plain: the typed AST (grammar.dump)
on stdout, build-check warnings on stderr, full validation. --json: BuildKit's parse tree, one object
per instruction with the conformance fields; an error prints {"error": ...}. Exit 1 on error. Click
at module scope; grammar (and lark) are imported when the command runs."""

from __future__ import annotations

import json
import sys

import click

from builder.commands import returns_code


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as fh:
        return fh.read()


def _emit(text: str) -> None:
    # undecodable bytes of the Dockerfile are kept as surrogates; print U+FFFD for them
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    click.echo(text, nl=False)


@click.command("parse")
@click.option("--json", "as_json", is_flag=True,
              help="Print BuildKit's parse tree as JSON (one object per instruction).")
@click.argument("path", metavar="PATH")
@returns_code
def parse(as_json: bool, path: str) -> int:
    """Parse the Dockerfile at PATH (`-` for stdin) and print what pybuild understood."""
    import grammar
    from grammar.errors import ParseError

    filename = "Dockerfile" if path == "-" else path
    try:
        source = _read(path)
    except OSError as exc:
        message = f"cannot read {path}: {exc.strerror or exc}"
        if as_json:
            _emit(json.dumps({"error": message}) + "\n")
        raise ParseError(message, filename=filename) from None
    if as_json:
        try:
            records = grammar.to_buildkit_json(source, filename=filename)
        except ParseError as exc:
            _emit(json.dumps({"error": exc.message, "file": exc.filename, "line": exc.line,
                              "column": exc.column}, ensure_ascii=False) + "\n")
            raise
        _emit(json.dumps(records, ensure_ascii=False, indent=2) + "\n")
        return 0
    df = grammar.parse(source, filename=filename)
    _emit(grammar.dump(df, warnings=False))
    for warning in df.warnings:
        click.echo(f"warning: {warning}", err=True)
    return 0
