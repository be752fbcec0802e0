"""The pybuild command line: a click group of lazily imported verbs (``_VERBS``), global flags, one
error presenter and docker's exit codes. Module scope imports only the stdlib-only error bases, so
``--help`` stays light (DESIGN C9); an ordinary run/push/pull never imports click (``_FAST``: option
tables, builder.commands._optable). A first argument that is an option or a path means ``build``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from builder.commands import Globals, report_error
from builder.errors import BuildError
from registry.errors import RegistryError
from runtime.errors import SandboxError

if TYPE_CHECKING:
    import click

    from grammar.errors import ParseError  # imported for real only by what parses

# (+ grammar's ParseError: see _parse_error; `pybuild run` never imports grammar)
_EXPECTED: tuple[type[Exception], ...] = (BuildError, RegistryError, SandboxError)

# verb -> "module:attribute"; a module is imported only when its verb runs.
_VERBS: dict[str, str] = {
    "build": "builder.commands.build:build",
    "builds": "builder.commands.builds:builds",
    "context": "builder.commands.build:context",
    "parse": "builder.commands.parse:parse",
    "images": "builder.commands.images:images",
    "image": "builder.commands.images:image",
    "inspect": "builder.commands.images:inspect",
    "history": "builder.commands.images:history",
    "tag": "builder.commands.images:tag",
    "rmi": "builder.commands.images:rmi",
    "save": "builder.commands.archive:save",
    "load": "builder.commands.archive:load",
    "import": "builder.commands.archive:import_",
    "system": "builder.commands.images:system",
    "pull": "builder.commands.transfer:pull",
    "push": "builder.commands.transfer:push",
    "login": "builder.commands.transfer:login",
    "logout": "builder.commands.transfer:logout",
    "run": "builder.commands.run:run",
    "ps": "builder.commands.containers:ps",
    "logs": "builder.commands.containers:logs",
    "exec": "builder.commands.containers:exec_",
    "stop": "builder.commands.containers:stop",
    "kill": "builder.commands.containers:kill",
    "start": "builder.commands.containers:start",
    "restart": "builder.commands.containers:restart",
    "rm": "builder.commands.containers:rm",
    "pause": "builder.commands.containers:pause",
    "unpause": "builder.commands.containers:unpause",
    "stats": "builder.commands.containers:stats",
    "top": "builder.commands.containers:top",
    "cp": "builder.commands.containers:cp",
    "wait": "builder.commands.containers:wait",
    "port": "builder.commands.containers:port",
    "container": "builder.commands.containers:container",
    "volume": "builder.commands.volumes:volume",
    "network": "builder.commands.networks:network",
}

# verb -> "module:function" reading an ordinary command line without click (the verb's
# option table, builder.commands._optable); it returns None when click must read it.
_FAST: dict[str, str] = {
    "run": "builder.commands.run:run_fast",
    "push": "builder.commands.transfer:push_fast",
    "pull": "builder.commands.transfer:pull_fast",
}

VERSION = "0.1.0"
UNKNOWN_ERROR = 125


def _looks_like_build_arg(arg: str) -> bool:
    """A first argument that is not a verb but an option, a path or a URL means `build`."""
    return (arg.startswith("-") or arg in (".", "..") or "/" in arg or Path(arg).exists()
            or arg.startswith(("http://", "https://", "git@")))


def _make_cli() -> click.Group:
    """The click group (imports click; built once, on first use)."""
    import click

    class _LazyGroup(click.Group):
        def list_commands(self, ctx: click.Context) -> list[str]:
            return sorted(v for v in _VERBS if self._available(v))

        @staticmethod
        def _available(name: str) -> bool:
            module = _VERBS[name].split(":")[0]
            return importlib.util.find_spec(module) is not None

        def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
            target = _VERBS.get(cmd_name)
            if target is None or not self._available(cmd_name):
                return None
            module, attr = target.split(":")
            cmd = getattr(importlib.import_module(module), attr)
            assert isinstance(cmd, click.Command)
            return cmd

        def resolve_command(self, ctx: click.Context,
                            args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
            first = args[0] if args else ""
            if first not in _VERBS and _looks_like_build_arg(first):
                build = self.get_command(ctx, "build")
                if build is not None:
                    return "build", build, args
            if first and first not in _VERBS:
                import difflib

                guess = difflib.get_close_matches(first, list(_VERBS), n=1)
                hint = f" (did you mean {guess[0]!r}?)" if guess else ""
                raise click.UsageError(f"unknown command {first!r}{hint}", ctx)
            return super().resolve_command(ctx, args)

    @click.group(cls=_LazyGroup, invoke_without_command=True,
                 context_settings={"help_option_names": ["-h", "--help"],
                                   "ignore_unknown_options": True,
                                   "allow_interspersed_args": False})
    @click.option("--root", type=click.Path(file_okay=False), envvar="PYBUILD_ROOT",
                  help="Store directory (default: /var/lib/pybuild as root, else $XDG_DATA_HOME/pybuild).")
    @click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
    @click.option("--version", "show_version", is_flag=True, help="Print the version and exit.")
    @click.pass_context
    def cli(ctx: click.Context, root: str | None, debug: bool, show_version: bool) -> None:
        """pybuild: build, run, push and pull container images without a daemon.

        `pybuild -t app:1.0 .` is short for `pybuild build -t app:1.0 .`.
        """
        ctx.obj = Globals(root=root, debug=debug)
        if debug:
            import logging

            logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
        if show_version:
            _print_version(debug)
            ctx.exit(0)
        if ctx.invoked_subcommand is None:
            click.echo(ctx.get_help())

    return cli


_CLI: click.Group | None = None


def _cli() -> click.Group:
    global _CLI
    if _CLI is None:
        _CLI = _make_cli()
    return _CLI


def __getattr__(name: str) -> click.Group:
    """``builder.cli.cli``, the click group, for whoever wants it (PEP 562)."""
    if name == "cli":
        return _cli()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _print_version(debug: bool) -> None:
    import click

    click.echo(f"pybuild version {VERSION}")
    if debug:
        for pkg in ("builder", "grammar", "registry", "runtime"):
            mod = importlib.import_module(pkg)
            click.echo(f"  {pkg}: {Path(mod.__file__ or '?').parent}")
        click.echo(f"  python: {sys.executable} {sys.version.split()[0]}")


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _parse_error() -> type[ParseError] | None:
    """grammar's ParseError, if grammar was imported at all (nothing else can raise one)."""
    mod = sys.modules.get("grammar.errors")
    return getattr(mod, "ParseError", None) if mod is not None else None


def _expected(exc: BaseException) -> TypeGuard[BuildError | RegistryError | SandboxError | ParseError]:
    perr = _parse_error()
    return isinstance(exc, _EXPECTED) or (perr is not None and isinstance(exc, perr))


def _present(exc: BaseException) -> None:
    perr = _parse_error()
    text = exc.render() if perr is not None and isinstance(exc, perr) else str(exc)
    report_error(text, getattr(exc, "hint", None))


def _verb(args: list[str]) -> str | None:
    """The verb of a command line (the first word after the group's own options)."""
    i = 0
    while i < len(args):
        if args[i] == "--root":
            i += 2
        elif args[i].startswith("--root=") or args[i] == "--debug":
            i += 1
        else:
            return args[i]
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (docker's/podman's conventions).

    As the program itself (``argv`` None: the console script, ``python -m builder``), a
    foreground ``run`` ends the process here once its output is flushed: the interpreter's
    own teardown of every imported module (~15 ms) would only delay the container's exit
    code, and nothing on that path needs atexit handlers (no threads, no temp files). Other
    verbs return normally after ``gc.freeze()``."""
    args = list(sys.argv[1:] if argv is None else argv)
    code = _main(args)
    if argv is None:
        if _verb(args) == "run":
            _exit_now(code)
        # any other verb: atexit hooks still run, but the interpreter's final garbage
        # collections skip every object alive now (~20 ms at the end of e.g. `pybuild push`)
        import gc

        gc.freeze()
    return code


def _exit_now(code: int) -> None:
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _main(args: list[str]) -> int:
    debug = "--debug" in args[: args.index("--") if "--" in args else len(args)]
    try:
        fast = _FAST.get(_verb(args) or "")
        if fast is not None:
            module, attr = fast.split(":")
            code = getattr(importlib.import_module(module), attr)(args)
            if code is not None:           # None: click must read this command line
                return int(code)
        return _click_main(args)
    except KeyboardInterrupt:
        _err("aborted")
        return 130
    except BrokenPipeError:
        # stdout closed early (`pybuild images | head`): not an error worth a traceback.
        sys.stderr.close()
        return 141
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug notice, exit 125
        if debug:
            raise
        if _expected(exc):
            _present(exc)
            return int(exc.exit_code)
        report_error(f"internal error ({type(exc).__name__}: {exc})",
                     "this is a pybuild bug; re-run with --debug for the traceback and report it")
        return UNKNOWN_ERROR


def _click_main(args: list[str]) -> int:
    import click

    try:
        rv: Any = _cli().main(args=args, prog_name="pybuild", standalone_mode=False)
        return int(rv or 0) if isinstance(rv, int) else 0
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.UsageError as exc:
        exc.show()
        return UNKNOWN_ERROR  # docker and podman exit 125 on flag errors
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        _err("aborted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
