"""`pybuild pull | push | login | logout`: thin wrappers over registry.remote.

stdout carries the machine-usable result (pull: the full reference as docker's last line;
push: the pushed manifest digest); progress, warnings and diagnostics go to stderr (bars on a
TTY, one line per blob otherwise). Credentials are never echoed. Stdlib only at module scope:
the click commands are built on first use (PEP 562), and an ordinary push/pull command line
is read by ``push_fast``/``pull_fast`` without click (the same options; anything else: click).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from builder.commands import Globals

if TYPE_CHECKING:
    from registry.remote.config import RegistriesConfig
    from registry.remote.progress import Event


def _echo(text: str, *, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def _config(tls_verify: bool, insecure: tuple[str, ...], cert_dirs: tuple[str, ...]) -> RegistriesConfig:
    from registry.remote.config import RegistriesConfig

    return RegistriesConfig.load(insecure_hosts=insecure, tls_verify=tls_verify, certs_dirs=cert_dirs)


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n:.1f}GB"


class _Renderer:
    """Progress on stderr: bars redrawn in place on a TTY, one line per finished blob otherwise."""

    def __init__(self, verb: str, *, quiet: bool = False) -> None:
        self.verb = verb
        self.quiet = quiet
        self.tty = sys.stderr.isatty() and not quiet
        self.lock = threading.Lock()
        self.rows: dict[str, tuple[int, int, str]] = {}
        self.order: list[str] = []
        self.drawn = 0
        self.last_draw = 0.0

    def __call__(self, ev: Event) -> None:
        with self.lock:
            self._handle(ev)

    def _say(self, text: str) -> None:
        if self.tty and self.drawn:
            sys.stderr.write(f"\x1b[{self.drawn}A\x1b[J")
            self.drawn = 0
        sys.stderr.write(text + "\n")
        if self.tty:
            self._draw(force=True)
        sys.stderr.flush()

    def _handle(self, ev: Event) -> None:
        short = ev.digest.removeprefix("sha256:")[:12]
        if ev.kind == "warning":
            self._say(f"warning: {ev.note}")
            return
        if self.quiet:
            return
        if ev.kind == "resolve":
            self._say(f"{self.verb} {ev.note}")
        elif ev.kind in ("start", "progress", "retry"):
            if ev.digest not in self.rows:
                self.order.append(ev.digest)
            label = {"start": "waiting", "progress": "transferring", "retry": "retrying"}[ev.kind]
            self.rows[ev.digest] = (ev.done, ev.total, label)
            if ev.kind == "retry" and not self.tty:
                self._say(f"{short}: retrying ({ev.note})")
            if self.tty:
                self._draw()
        elif ev.kind in ("done", "skip"):
            self.rows.pop(ev.digest, None)
            if ev.digest in self.order:
                self.order.remove(ev.digest)
            what = ev.note or ("done" if ev.kind == "done" else "exists")
            if ev.kind == "skip":
                self._say(f"{short}: already {'exists' if what == 'exists' else what}")
            elif what == "pushed":
                self._say(f"{short}: pushed {_human(ev.total)}")
            elif what.startswith("mounted"):
                self._say(f"{short}: {what}")
            else:
                self._say(
                    f"{short}: {'downloaded' if self.verb.startswith('Pull') else 'done'} {_human(ev.total)}"
                )

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        if self.drawn:
            sys.stderr.write(f"\x1b[{self.drawn}A\x1b[J")
        lines = []
        for d in self.order:
            done, total, label = self.rows[d]
            width = 30
            filled = int(width * done / total) if total else 0
            bar = "=" * max(0, filled - 1) + (">" if filled else "") + " " * (width - filled)
            lines.append(
                f"{d.removeprefix('sha256:')[:12]}: {label:<12} [{bar}] {_human(done)}/{_human(total)}"
            )
        if lines:
            sys.stderr.write("\n".join(lines) + "\n")
        self.drawn = len(lines)
        sys.stderr.flush()

    def finish(self) -> None:
        with self.lock:
            if self.tty and self.drawn:
                sys.stderr.write(f"\x1b[{self.drawn}A\x1b[J")
                self.drawn = 0
                sys.stderr.flush()


# -- the verbs' work (click-free: shared by the click commands and the fast path) --------------
def pull_image_cmd(g: Globals, reference: str, *, platform: Any = None, jobs: int = 4, quiet: bool = False,
                   allow_foreign_urls: bool = False, tls_verify: bool = True,
                   insecure: tuple[str, ...] = (), cert_dirs: tuple[str, ...] = ()) -> int:
    """`pybuild pull` once its options are read (``platform``: a registry.model.Platform)."""
    from registry.reference import parse_reference
    from registry.remote.pull import pull_image

    ref = parse_reference(reference)
    store = g.store()
    render = _Renderer("Pulling", quiet=quiet)
    try:
        result = pull_image(
            store,
            ref,
            platform=platform,
            jobs=jobs,
            config=_config(tls_verify, insecure, cert_dirs),
            progress=render,
            allow_foreign=allow_foreign_urls,
        )
    finally:
        render.finish()
    if not quiet:
        _echo(f"Digest: {result.repo_digest}", err=True)
        status = (
            f"Image is up to date for {ref.familiar()}"
            if result.up_to_date
            else f"Downloaded newer image for {ref.familiar()}"
        )
        _echo(f"Status: {status}", err=True)
    _echo(result.name)
    return 0


def push_image_cmd(g: Globals, image: str, destination: str | None, *, jobs: int = 4,
                   chunk_size: int | None = None, digestfile: str | None = None, quiet: bool = False,
                   tls_verify: bool = True, insecure: tuple[str, ...] = (),
                   cert_dirs: tuple[str, ...] = ()) -> int:
    """`pybuild push` once its options are read."""
    from pathlib import Path

    from registry.remote.push import push_image

    store = g.store()
    render = _Renderer("Pushing", quiet=quiet)
    if not quiet:
        _echo(f"Pushing {destination or image}", err=True)
    try:
        result = push_image(
            store,
            image,
            destination,
            jobs=jobs,
            chunk_size=chunk_size,
            config=_config(tls_verify, insecure, cert_dirs),
            progress=render,
        )
    finally:
        render.finish()
    if not quiet:
        _echo(f"{result.dest}: digest: {result.digest} size: {result.size}", err=True)
    if digestfile:
        Path(digestfile).write_text(str(result.digest))
    _echo(str(result.digest))
    return 0


def parse_size(text: str) -> int:
    """'8MiB', '512k', '1g', '1000' → bytes; ValueError (with the CLI's message) otherwise."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = units.get(t[-1:], 1)
    if t[-1:] in units:
        t = t[:-1]
    try:
        value = int(float(t) * mult)
    except ValueError:
        raise ValueError(f"{text!r} is not a size (e.g. 5MiB)") from None
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _host_of(registry: str | None) -> str:
    from registry.remote.config import DOCKER_HUB_API

    if not registry:
        return DOCKER_HUB_API
    text = registry
    for scheme in ("https://", "http://"):
        text = text.removeprefix(scheme)
    host = text.split("/", 1)[0]
    if host in ("docker.io", "index.docker.io", "registry.hub.docker.com"):
        return DOCKER_HUB_API
    return host


# -- the click commands (built on first use) --------------------------------------------------
def _build_commands() -> dict[str, Any]:
    import click

    from builder.commands import pass_globals as _pass_globals
    from builder.commands import returns_code

    pass_globals = cast("Callable[[Callable[..., int]], Callable[..., int]]", _pass_globals)

    def registry_options(fn: Any) -> Any:
        fn = click.option(
            "--tls-verify",
            type=click.BOOL,
            default=True,
            show_default=True,
            help="Verify TLS certificates (false also allows plain HTTP).",
        )(fn)
        fn = click.option(
            "--insecure-registry",
            "insecure",
            multiple=True,
            metavar="HOST[:PORT]",
            help="Allow plain HTTP / unverified TLS for this registry (repeatable).",
        )(fn)
        fn = click.option(
            "--cert-dir",
            "cert_dirs",
            multiple=True,
            type=click.Path(file_okay=False),
            help="Extra certs.d-style directory (HOST/ca.crt).",
        )(fn)
        return fn

    @click.command()
    @click.argument("reference")
    @click.option(
        "--platform", help="os/arch[/variant] to pick from a multi-platform image (default: this host)."
    )
    @click.option(
        "-j",
        "--jobs",
        type=click.IntRange(1, 64),
        default=4,
        show_default=True,
        help="Blobs downloaded in parallel.",
    )
    @click.option("-q", "--quiet", is_flag=True, help="Print only the reference.")
    @click.option(
        "--allow-foreign-urls", is_flag=True, help="Fetch foreign (non-distributable) layers from their URLs."
    )
    @registry_options
    @pass_globals
    @returns_code
    def pull(
        g: Globals,
        reference: str,
        platform: str | None,
        jobs: int,
        quiet: bool,
        allow_foreign_urls: bool,
        tls_verify: bool,
        insecure: tuple[str, ...],
        cert_dirs: tuple[str, ...],
    ) -> int:
        """Pull an image from a registry into the local store."""
        plat = None
        if platform:
            from registry.model import Platform

            try:
                plat = Platform.parse(platform)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--platform") from None
        return pull_image_cmd(g, reference, platform=plat, jobs=jobs, quiet=quiet,
                              allow_foreign_urls=allow_foreign_urls, tls_verify=tls_verify,
                              insecure=insecure, cert_dirs=cert_dirs)

    @click.command()
    @click.argument("image")
    @click.argument("destination", required=False)
    @click.option(
        "-j",
        "--jobs",
        type=click.IntRange(1, 64),
        default=4,
        show_default=True,
        help="Blobs uploaded in parallel.",
    )
    @click.option("--chunk-size", help="Upload blobs in PATCH chunks of this size (e.g. 8MiB).")
    @click.option("--digestfile", type=click.Path(dir_okay=False), help="Also write the digest to this file.")
    @click.option("-q", "--quiet", is_flag=True, help="Print only the digest.")
    @registry_options
    @pass_globals
    @returns_code
    def push(
        g: Globals,
        image: str,
        destination: str | None,
        jobs: int,
        chunk_size: str | None,
        digestfile: str | None,
        quiet: bool,
        tls_verify: bool,
        insecure: tuple[str, ...],
        cert_dirs: tuple[str, ...],
    ) -> int:
        """Push an image from the local store to a registry (IMAGE [DESTINATION])."""
        size = None
        if chunk_size:
            try:
                size = parse_size(chunk_size)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--chunk-size") from None
        return push_image_cmd(g, image, destination, jobs=jobs, chunk_size=size, digestfile=digestfile,
                              quiet=quiet, tls_verify=tls_verify, insecure=insecure, cert_dirs=cert_dirs)

    @click.command()
    @click.argument("registry", required=False)
    @click.option("-u", "--username", help="Username.")
    @click.option("-p", "--password", help="Password (insecure: use --password-stdin).")
    @click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
    @registry_options
    @pass_globals
    @returns_code
    def login(
        g: Globals,
        registry: str | None,
        username: str | None,
        password: str | None,
        password_stdin: bool,
        tls_verify: bool,
        insecure: tuple[str, ...],
        cert_dirs: tuple[str, ...],
    ) -> int:
        """Log in to a registry (default: Docker Hub); verifies, then stores the credentials in
        docker's config.json (shared with docker, podman and skopeo)."""
        from registry.remote.auth import Credentials, CredentialStore
        from registry.remote.client import Remote

        del g
        if password and password_stdin:
            raise click.UsageError("--password and --password-stdin are mutually exclusive")
        if password:
            click.echo("WARNING! Using --password via the CLI is insecure. Use --password-stdin.", err=True)
        if password_stdin:
            if not username:
                raise click.UsageError("must provide --username with --password-stdin")
            password = sys.stdin.read().rstrip("\r\n")
        host = _host_of(registry)
        store = CredentialStore()
        if not username:
            existing = store.get(host)
            default = existing.username if existing is not None else ""
            if not sys.stdin.isatty():
                raise click.UsageError(
                    "no username given and stdin is not a terminal (use -u USER --password-stdin)"
                )
            username = click.prompt("Username", default=default or None)
        if not password:
            if not sys.stdin.isatty():
                raise click.UsageError("no password given and stdin is not a terminal (use --password-stdin)")
            password = click.prompt("Password", hide_input=True)
        creds = Credentials(username or "", password or "")
        config = _config(tls_verify, insecure, cert_dirs)
        with Remote(config, credentials={host: creds}, credential_store=store) as remote:
            remote.registry(host).ping()
            refresh = getattr(remote.auth, "last_refresh_token", "")
        if refresh:
            creds = Credentials(creds.username, "", identity_token=refresh)
        where = store.save(host, creds)
        click.echo(f"credentials saved in {where}", err=True)
        click.echo("Login Succeeded")
        return 0

    @click.command()
    @click.argument("registry", required=False)
    @pass_globals
    @returns_code
    def logout(g: Globals, registry: str | None) -> int:
        """Remove the stored credentials for a registry (default: Docker Hub)."""
        from registry.remote.auth import CredentialStore, config_key

        del g
        host = _host_of(registry)
        if not CredentialStore().erase(host):
            click.echo(f"Not logged in to {config_key(host)}", err=True)
            return 0
        click.echo(f"Removing login credentials for {config_key(host)}")
        return 0

    return {"pull": pull, "push": push, "login": login, "logout": logout}


_COMMANDS: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    """``pull``, ``push``, ``login``, ``logout``: the click commands, built (and click
    imported) when the CLI first asks for one (PEP 562)."""
    if name in ("pull", "push", "login", "logout"):
        if not _COMMANDS:
            _COMMANDS.update(_build_commands())
        return _COMMANDS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the fast path: an ordinary `pybuild [--root DIR] push|pull ...` without click -------------
_BOOL = {"1": True, "true": True, "t": True, "yes": True, "y": True, "on": True,
         "0": False, "false": False, "f": False, "no": False, "n": False, "off": False}
_FLAGS = {"push": {"-q": "quiet", "--quiet": "quiet"},
          "pull": {"-q": "quiet", "--quiet": "quiet", "--allow-foreign-urls": "allow_foreign_urls"}}
_VALUES = {"push": {"-j": "jobs", "--jobs": "jobs", "--chunk-size": "chunk_size",
                    "--digestfile": "digestfile"},
           "pull": {"-j": "jobs", "--jobs": "jobs", "--platform": "platform"}}
_COMMON = {"--tls-verify": "tls_verify", "--insecure-registry": "insecure", "--cert-dir": "cert_dirs"}
_MULTI = ("insecure", "cert_dirs")


def _path_ok(value: str, *, dir_okay: bool, file_okay: bool) -> bool:
    """What click.Path(...) accepts (need not exist; if it does: the right kind, readable)."""
    import stat

    try:
        st = os.stat(value)  # noqa: PTH116 - no pathlib on the fast path
    except OSError:
        return True
    if (not dir_okay and stat.S_ISDIR(st.st_mode)) or (not file_okay and stat.S_ISREG(st.st_mode)):
        return False
    return os.access(value, os.R_OK)


def fast_parse(args: list[str], verb: str) -> tuple[str | None, list[str], dict[str, Any]] | None:
    """``(root, positionals, options)`` for a whole command line ``[--root DIR] VERB ...`` with
    VERB push or pull, read as click reads it; None for anything left to click (help, other
    global flags, unknown, bundled or malformed options, values click would refuse), which
    then handles and reports it exactly as before."""
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
    if root == "" or (root is not None and not _path_ok(root, dir_okay=True, file_okay=False)):
        return None
    flags, values = _FLAGS[verb], {**_VALUES[verb], **_COMMON}
    opts: dict[str, Any] = {"insecure": [], "cert_dirs": []}
    positionals: list[str] = []
    rest = args[i + 1:]
    j = 0
    while j < len(rest):
        a = rest[j]
        j += 1
        if a == "--":
            positionals += rest[j:]
            break
        if a[:1] != "-" or a == "-":
            positionals.append(a)
            continue
        name, eq, value = a.partition("=") if a.startswith("--") else (a, "", "")
        if name in flags and not eq:
            opts[flags[name]] = True
            continue
        dest = values.get(name)
        if dest is None:
            return None                      # unknown, --help, -qj4...: click decides
        if not eq:
            if j >= len(rest):
                return None
            value, j = rest[j], j + 1
        if dest in _MULTI:
            opts[dest].append(value)
        else:
            opts[dest] = value
    return root, positionals, opts


def _fast_common(opts: dict[str, Any]) -> dict[str, Any] | None:
    out: dict[str, Any] = {"quiet": bool(opts.get("quiet")), "insecure": tuple(opts["insecure"]),
                           "cert_dirs": tuple(opts["cert_dirs"])}
    if any(not _path_ok(d, dir_okay=True, file_okay=False) for d in out["cert_dirs"]):
        return None
    if "tls_verify" in opts:
        verify = _BOOL.get(str(opts["tls_verify"]).strip().lower())
        if verify is None:
            return None
        out["tls_verify"] = verify
    if "jobs" in opts:
        try:
            jobs = int(str(opts["jobs"]).strip())
        except ValueError:
            return None
        if not 1 <= jobs <= 64:
            return None
        out["jobs"] = jobs
    return out


def push_fast(args: list[str]) -> int | None:
    """`pybuild push` without click for an ordinary command line; None: let click read it."""
    parsed = fast_parse(args, "push")
    if parsed is None:
        return None
    root, positionals, opts = parsed
    common = _fast_common(opts)
    if common is None or not 1 <= len(positionals) <= 2:
        return None
    size = None
    if opts.get("chunk_size") is not None:
        try:
            size = parse_size(opts["chunk_size"])
        except ValueError:
            return None
    digestfile = opts.get("digestfile")
    if digestfile is not None and not _path_ok(digestfile, dir_okay=False, file_okay=True):
        return None
    image, destination = positionals[0], positionals[1] if len(positionals) == 2 else None
    return push_image_cmd(Globals(root=root), image, destination, chunk_size=size,
                          digestfile=digestfile, **common)


def pull_fast(args: list[str]) -> int | None:
    """`pybuild pull` without click for an ordinary command line; None: let click read it."""
    parsed = fast_parse(args, "pull")
    if parsed is None:
        return None
    root, positionals, opts = parsed
    common = _fast_common(opts)
    if common is None or len(positionals) != 1:
        return None
    platform = None
    if opts.get("platform"):
        from registry.model import Platform

        try:
            platform = Platform.parse(opts["platform"])
        except ValueError:
            return None
    return pull_image_cmd(Globals(root=root), positionals[0], platform=platform,
                          allow_foreign_urls=bool(opts.get("allow_foreign_urls")), **common)
