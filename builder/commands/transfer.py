"""`pybuild pull | push | login | logout`: thin wrappers over registry.remote.

stdout carries the machine-usable result (pull: the full reference as docker's last line;
push: the pushed manifest digest); progress, warnings and diagnostics go to stderr (bars on a
TTY, one line per blob otherwise). Credentials are never echoed.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import click

from builder.commands import Globals, pass_globals, returns_code

if TYPE_CHECKING:
    from registry.remote.config import RegistriesConfig
    from registry.remote.progress import Event


def _registry_options(fn: Any) -> Any:
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
@_registry_options
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
    from registry.model import Platform
    from registry.reference import parse_reference
    from registry.remote.pull import pull_image

    ref = parse_reference(reference)
    plat = None
    if platform:
        try:
            plat = Platform.parse(platform)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--platform") from None
    store = g.store()
    render = _Renderer("Pulling", quiet=quiet)
    try:
        result = pull_image(
            store,
            ref,
            platform=plat,
            jobs=jobs,
            config=_config(tls_verify, insecure, cert_dirs),
            progress=render,
            allow_foreign=allow_foreign_urls,
        )
    finally:
        render.finish()
    if not quiet:
        click.echo(f"Digest: {result.repo_digest}", err=True)
        status = (
            f"Image is up to date for {ref.familiar()}"
            if result.up_to_date
            else f"Downloaded newer image for {ref.familiar()}"
        )
        click.echo(f"Status: {status}", err=True)
    click.echo(result.name)
    return 0


def _chunk_size(text: str | None) -> int | None:
    if not text:
        return None
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = units.get(t[-1:], 1)
    if t[-1:] in units:
        t = t[:-1]
    try:
        value = int(float(t) * mult)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size (e.g. 5MiB)", param_hint="--chunk-size") from None
    if value <= 0:
        raise click.BadParameter("must be positive", param_hint="--chunk-size")
    return value


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
@_registry_options
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
    from pathlib import Path

    from registry.remote.push import push_image

    store = g.store()
    render = _Renderer("Pushing", quiet=quiet)
    if not quiet:
        click.echo(f"Pushing {destination or image}", err=True)
    try:
        result = push_image(
            store,
            image,
            destination,
            jobs=jobs,
            chunk_size=_chunk_size(chunk_size),
            config=_config(tls_verify, insecure, cert_dirs),
            progress=render,
        )
    finally:
        render.finish()
    if not quiet:
        click.echo(f"{result.dest}: digest: {result.digest} size: {result.size}", err=True)
    if digestfile:
        Path(digestfile).write_text(str(result.digest))
    click.echo(str(result.digest))
    return 0


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


@click.command()
@click.argument("registry", required=False)
@click.option("-u", "--username", help="Username.")
@click.option("-p", "--password", help="Password (insecure: use --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@_registry_options
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
