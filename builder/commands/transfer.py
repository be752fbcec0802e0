"""`pybuild pull | push | login | logout` over registry.remote. stdout: the result (pull: the full
reference; push: the manifest digest); progress and diagnostics on stderr; credentials never echoed.
push/pull are option tables (builder.commands._optable): builder.cli reads an ordinary line without
click, and the click commands are built from the same tables on first use. Stdlib at module scope."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from builder.commands import Globals
from builder.commands._format import short_size
from builder.commands._optable import (
    FLAG,
    MULTI,
    VALUE,
    Arg,
    Opt,
    Verb,
    click_command,
    click_options,
    fast_parse,
)

if TYPE_CHECKING:
    import click

    from registry.model import Platform
    from registry.remote.config import RegistriesConfig
    from registry.remote.progress import Event


def _echo(text: str, *, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def _config(tls_verify: bool, insecure: tuple[str, ...], cert_dirs: tuple[str, ...]) -> RegistriesConfig:
    from registry.remote.config import RegistriesConfig

    return RegistriesConfig.load(insecure_hosts=insecure, tls_verify=tls_verify, certs_dirs=cert_dirs)


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
                self._say(f"{short}: pushed {short_size(ev.total)}")
            elif what.startswith("mounted"):
                self._say(f"{short}: {what}")
            else:
                done = "downloaded" if self.verb.startswith("Pull") else "done"
                self._say(f"{short}: {done} {short_size(ev.total)}")

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
            size = f"{short_size(done)}/{short_size(total)}"
            lines.append(f"{d.removeprefix('sha256:')[:12]}: {label:<12} [{bar}] {size}")
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
def pull_image_cmd(g: Globals, reference: str, *, platform: Platform | None = None, jobs: int = 4,
                   quiet: bool = False, allow_foreign_urls: bool = False, tls_verify: bool = True,
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



def _platform(text: str) -> Platform | None:
    from registry.model import Platform

    return Platform.parse(text) if text else None


def _chunk_size(text: str) -> int | None:
    return parse_size(text) if text else None


# -- the option tables (click and the fast path read the same ones) -----------------------------
REGISTRY_OPTIONS: tuple[Opt, ...] = (
    Opt(("--cert-dir",), "cert_dirs", MULTI, "Extra certs.d-style directory (HOST/ca.crt).", type="dir"),
    Opt(("--insecure-registry",), "insecure", MULTI,
        "Allow plain HTTP / unverified TLS for this registry (repeatable).", metavar="HOST[:PORT]"),
    Opt(("--tls-verify",), "tls_verify", VALUE, "Verify TLS certificates (false also allows plain HTTP).",
        default=True, type="bool", show_default=True),
)
PULL = Verb("pull", (
    Opt(("--platform",), "platform", VALUE,
        "os/arch[/variant] to pick from a multi-platform image (default: this host).", convert=_platform),
    Opt(("-j", "--jobs"), "jobs", VALUE, "Blobs downloaded in parallel.", default=4, type="int",
        int_range=(1, 64), show_default=True),
    Opt(("-q", "--quiet"), "quiet", FLAG, "Print only the reference."),
    Opt(("--allow-foreign-urls",), "allow_foreign_urls", FLAG,
        "Fetch foreign (non-distributable) layers from their URLs."),
    *REGISTRY_OPTIONS,
), (Arg("reference"),))
PUSH = Verb("push", (
    Opt(("-j", "--jobs"), "jobs", VALUE, "Blobs uploaded in parallel.", default=4, type="int",
        int_range=(1, 64), show_default=True),
    Opt(("--chunk-size",), "chunk_size", VALUE, "Upload blobs in PATCH chunks of this size (e.g. 8MiB).",
        convert=_chunk_size),
    Opt(("--digestfile",), "digestfile", VALUE, "Also write the digest to this file.", type="file"),
    Opt(("-q", "--quiet"), "quiet", FLAG, "Print only the digest."),
    *REGISTRY_OPTIONS,
), (Arg("image"), Arg("destination", required=False)))


def _fast(args: list[str], verb: Verb, command: Callable[..., int]) -> int | None:
    parsed = fast_parse(args, verb)
    if parsed is None:
        return None
    root, params = parsed
    return command(Globals(root=root), **params)


def pull_fast(args: list[str]) -> int | None:
    """`pybuild pull` without click for an ordinary command line; None: let click read it."""
    return _fast(args, PULL, pull_image_cmd)


def push_fast(args: list[str]) -> int | None:
    """`pybuild push` without click for an ordinary command line; None: let click read it."""
    return _fast(args, PUSH, push_image_cmd)


# -- the click commands (built on first use) --------------------------------------------------
def _build_commands() -> dict[str, click.Command]:
    import click

    from builder.commands import pass_globals, returns_code

    def pull(g: Globals, **params: Any) -> int:
        """Pull an image from a registry into the local store."""
        return pull_image_cmd(g, **params)

    def push(g: Globals, **params: Any) -> int:
        """Push an image from the local store to a registry (IMAGE [DESTINATION])."""
        return push_image_cmd(g, **params)

    def registry_options(fn: Callable[..., Any]) -> Callable[..., Any]:
        return click_options(fn, REGISTRY_OPTIONS)

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

    return {"pull": click_command(PULL, pass_globals(returns_code(pull))),
            "push": click_command(PUSH, pass_globals(returns_code(push))),
            "login": login, "logout": logout}


_COMMANDS: dict[str, click.Command] = {}


def __getattr__(name: str) -> click.Command:
    """``pull``, ``push``, ``login``, ``logout``: the click commands, built (and click
    imported) when the CLI first asks for one (PEP 562)."""
    if name in ("pull", "push", "login", "logout"):
        if not _COMMANDS:
            _COMMANDS.update(_build_commands())
        return _COMMANDS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
