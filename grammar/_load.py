"""Build the LALR parser for grammar/dockerfile.lark once per process (DESIGN 2.7): package data read
through ``Lark.open_from_package`` (wheels and zips), analysed tables cached in a file under the
user's cache directory (an unusable directory just means no cache). Imports lark; no lark type
leaves grammar/."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import pkgutil
import sys
from pathlib import Path
from typing import Any

import lark

GRAMMAR = "dockerfile.lark"
START_SYMBOLS = ("start", "start_bt", "start_shell", "start_shell_bt")


def _cache_dir() -> Path | None:
    """$XDG_CACHE_HOME/pybuild (or ~/.cache/pybuild), private to this user, else None.

    The cache is a pickle, so it is only used from a directory that we own and that nobody
    else can write to.
    """
    base = os.environ.get("XDG_CACHE_HOME")
    path = (Path(base) if base else Path.home() / ".cache") / "pybuild"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError:
        return None
    if st.st_uid != os.geteuid() or st.st_mode & 0o022 or not os.access(path, os.W_OK):
        return None
    return path


def _cache_file(grammar_text: bytes) -> Path | None:
    directory = _cache_dir()
    if directory is None:
        return None
    digest = hashlib.sha256(grammar_text + lark.__version__.encode()).hexdigest()[:16]
    return directory / f"dockerfile-lalr-{digest}-py{sys.version_info[0]}{sys.version_info[1]}.cache"


@functools.cache
def parser(transformer: lark.Transformer[Any, Any] | None = None) -> lark.Lark:
    """The shared LALR parser (contextual lexer, four start symbols, see the .lark file).

    ``transformer`` runs inline while parsing (no parse tree is built).
    """
    options: dict[str, Any] = {
        "parser": "lalr",
        "lexer": "contextual",
        "start": list(START_SYMBOLS),
        "maybe_placeholders": False,
        "transformer": transformer,
    }
    package = __package__ or "grammar"
    text = pkgutil.get_data(package, GRAMMAR) or b""
    cache = _cache_file(text)
    if cache is None:
        return lark.Lark.open_from_package(package, GRAMMAR, **options)
    # lark reads the cache, or builds the tables and writes the file in place when it is
    # missing or stale. The lock keeps a concurrent pybuild from reading a half-written file
    # (lark's cache key includes the path, so a write-then-rename is not possible).
    try:
        lock_fd = os.open(f"{cache}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return lark.Lark.open_from_package(package, GRAMMAR, **options)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        return lark.Lark.open_from_package(package, GRAMMAR, cache=str(cache), **options)
    finally:
        os.close(lock_fd)
