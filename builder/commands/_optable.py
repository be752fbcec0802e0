"""Option tables: a verb's options and arguments as data, read by click (``click_command``,
which imports click) or, for an ordinary command line, by ``fast_parse`` without click
(`pybuild run`, `push` and `pull` start ~12 ms sooner). Invariant: fast_parse returns exactly
click's parameters, or None for anything it does not read as click would (help, unknown or
malformed options, values click refuses), which click then reads and reports. Stdlib only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import click

FLAG, VALUE, MULTI = "flag", "value", "multi"

# click.BOOL's words (without "", which click reads as False: the fast path leaves it to click)
_BOOL = {"1": True, "true": True, "t": True, "yes": True, "y": True, "on": True,
         "0": False, "false": False, "f": False, "no": False, "n": False, "off": False}


class Opt:
    """One option: its spellings, click's parameter name, how it takes values and their type.
    ``type``: "str", "int" (``int_range``: click.IntRange), "choice" (``choices``), "bool"
    (click.BOOL), "file" / "dir" (click.Path(dir_okay=False) / (file_okay=False)); ``convert``
    turns the text into the value the command gets (ValueError: click's "Invalid value")."""

    __slots__ = ("choices", "convert", "decls", "default", "dest", "help", "int_range", "kind", "metavar",
                 "show_default", "type")

    def __init__(self, decls: tuple[str, ...], dest: str, kind: str, help: str, *,  # noqa: A002
                 default: Any = None, type: str = "str",  # noqa: A002
                 choices: tuple[str, ...] = (), int_range: tuple[int, int] | None = None,
                 convert: Callable[[str], Any] | None = None, metavar: str | None = None,
                 show_default: bool = False) -> None:
        self.decls, self.dest, self.kind, self.help = decls, dest, kind, help
        self.default = () if kind == MULTI else (False if kind == FLAG else default)
        self.type, self.choices, self.int_range, self.convert = type, choices, int_range, convert
        self.metavar, self.show_default = metavar, show_default

    def value(self, text: str) -> tuple[bool, Any]:
        """(True, what click would make of ``text``) or (False, None) where click may refuse it."""
        if self.convert is not None:
            try:
                return True, self.convert(text)
            except ValueError:
                return False, None
        if self.type == "int":
            try:
                number = int(text)
            except ValueError:
                return False, None
            if self.int_range is not None and not self.int_range[0] <= number <= self.int_range[1]:
                return False, None
            return True, number
        if self.type == "bool":
            flag = _BOOL.get(text.strip().lower())
            return (False, None) if flag is None else (True, flag)
        if self.type == "choice" and text not in self.choices:
            return False, None
        if self.type in ("file", "dir") and not path_ok(text, dir_okay=self.type == "dir",
                                                         file_okay=self.type == "file"):
            return False, None
        return True, text


@dataclass(frozen=True, slots=True)
class Arg:
    """A positional argument: ``nargs`` 1 or -1 (all the rest, a tuple)."""

    name: str
    required: bool = True
    nargs: int = 1


@dataclass(frozen=True, slots=True)
class Verb:
    """A command's table. ``interspersed``: options may follow arguments (click's default);
    run says False, so everything after IMAGE belongs to the container's command."""

    name: str
    options: tuple[Opt, ...]
    args: tuple[Arg, ...]
    interspersed: bool = True


def path_ok(value: str, *, dir_okay: bool, file_okay: bool) -> bool:
    """What click.Path(...) accepts (need not exist; if it does: the right kind, readable)."""
    import stat

    try:
        st = os.stat(value)  # noqa: PTH116 - no pathlib on the fast path
    except OSError:
        return True
    if (not dir_okay and stat.S_ISDIR(st.st_mode)) or (not file_okay and stat.S_ISREG(st.st_mode)):
        return False
    return os.access(value, os.R_OK)


def _group_root(args: list[str], verb: str) -> tuple[int, str | None] | None:
    """(index of VERB, --root) for ``[--root DIR]... VERB ...``; None for other group flags."""
    i, root = 0, None
    while i < len(args) and args[i] != verb:
        if args[i] == "--root" and i + 1 < len(args):
            root, i = args[i + 1], i + 2
        elif args[i].startswith("--root="):
            root, i = args[i][len("--root="):], i + 1
        else:
            return None
    if i >= len(args):
        return None
    if root is None:
        root = os.environ.get("PYBUILD_ROOT") or None
    if root == "" or (root is not None and not path_ok(root, dir_okay=True, file_okay=False)):
        return None
    return i, root


def fast_parse(args: list[str], verb: Verb) -> tuple[str | None, dict[str, Any]] | None:
    """``(root, params)`` for a whole command line ``[--root DIR] VERB ...``, where params is
    what click's context would hold (every option and argument by name); None: ask click."""
    found = _group_root(args, verb.name)
    if found is None:
        return None
    i, root = found
    by_name = {d: o for o in verb.options for d in o.decls}
    params: dict[str, Any] = {o.dest: o.default for o in verb.options}
    texts: dict[Opt, list[str]] = {}     # as given; converted at the end, as click does
    positionals: list[str] = []
    rest = args[i + 1:]
    j = 0

    while j < len(rest):
        a = rest[j]
        j += 1
        if a == "--":
            positionals += rest[j:]
            break
        if a[:1] != "-" or len(a) == 1:
            positionals.append(a)
            if not verb.interspersed:
                positionals += rest[j:]
                break
            continue
        if a.startswith("--"):
            name, eq, text = a.partition("=")
            o = by_name.get(name)
            if o is None:
                return None                # unknown (or --help): click reports it
            if o.kind == FLAG:
                if eq:
                    return None
                params[o.dest] = True
                continue
            if not eq:
                if j >= len(rest):
                    return None
                text, j = rest[j], j + 1
            texts.setdefault(o, []).append(text)
            continue
        for k in range(1, len(a)):         # a cluster of short options: -it, -eK=V, -qj4
            o = by_name.get("-" + a[k])
            if o is None:
                return None
            if o.kind == FLAG:
                params[o.dest] = True
                continue
            if k + 1 < len(a):
                text = a[k + 1:]
            elif j < len(rest):
                text, j = rest[j], j + 1
            else:
                return None
            texts.setdefault(o, []).append(text)
            break
    for o, given in texts.items():
        # click converts every value of a multiple option, but only the last of any other
        converted = [o.value(text) for text in (given if o.kind == MULTI else given[-1:])]
        if not all(ok for ok, _ in converted):
            return None                    # click's "Invalid value"
        values = [value for _, value in converted]
        params[o.dest] = tuple(values) if o.kind == MULTI else values[0]
    for arg in verb.args:
        if arg.nargs == -1:
            params[arg.name], positionals = tuple(positionals), []
        elif positionals:
            params[arg.name] = positionals.pop(0)
        elif arg.required:
            return None                    # click's "Missing argument"
        else:
            params[arg.name] = None
    if positionals:
        return None                        # click's "Got unexpected extra argument"
    return root, params


# -- the click side -------------------------------------------------------------------------------
def click_options(fn: Callable[..., Any], options: tuple[Opt, ...]) -> Callable[..., Any]:
    """``fn`` decorated with click options from the table (in table order, as if written so)."""
    import click

    for o in reversed(options):        # decorators apply bottom-up
        kw: dict[str, Any] = {"help": o.help}
        if o.kind == FLAG:
            kw["is_flag"] = True
        elif o.kind == MULTI:
            kw["multiple"] = True
        elif o.default is not None:
            kw["default"] = o.default
        if o.convert is not None:
            kw["callback"] = _callback(o)
        elif o.type == "int":
            kw["type"] = click.IntRange(*o.int_range) if o.int_range else int
        elif o.type == "bool":
            kw["type"] = click.BOOL
        elif o.type == "choice":
            kw["type"] = click.Choice(list(o.choices))
        elif o.type in ("file", "dir"):
            kw["type"] = click.Path(dir_okay=o.type == "dir", file_okay=o.type == "file")
        if o.metavar:
            kw["metavar"] = o.metavar
        if o.show_default:
            kw["show_default"] = True
        fn = click.option(*o.decls, o.dest, **kw)(fn)
    return fn


def click_command(verb: Verb, fn: Callable[..., Any], *,
                  context_settings: dict[str, Any] | None = None) -> click.Command:
    """The click command for ``verb`` around ``fn`` (which already takes Globals first)."""
    import click

    settings = dict(context_settings or {})
    fn = click_options(fn, verb.options)
    for arg in reversed(verb.args):
        kw: dict[str, Any] = {"required": arg.required}
        if arg.nargs == -1:
            kw = {"nargs": -1, "type": click.UNPROCESSED}
        fn = click.argument(arg.name, **kw)(fn)
    if not verb.interspersed:
        settings["allow_interspersed_args"] = False
    return click.command(verb.name, context_settings=settings)(fn)


def _callback(o: Opt) -> Callable[[click.Context, click.Parameter, str | None], Any]:
    """A click callback that calls ``o.convert`` on the text (a ValueError becomes click's
    "Invalid value for --OPTION: ...")."""
    import click

    assert o.convert is not None
    convert: Callable[[str], Any] = o.convert
    hint = o.decls[-1]

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return convert(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param_hint=hint) from None

    return callback
