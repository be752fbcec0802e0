"""Container verbs: `ps`, `logs`, `exec`, `stop`, `kill`, `start`, `restart`, `rm`, `pause`,
`unpause`, `stats`, `top`, `cp`, `wait`, `port`, `container …`, and the container side of
`inspect` (runtime.lifecycle, runtime.monitor).

Only click and the stdlib at module scope. Docker's flags, output and exit codes: 1 when a
container is missing or in the wrong state (the other arguments are still processed), 125 for
bad flags; `exec` and `start -a` pass the container's exit code through.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from builder.commands import (
    Globals,
    confirm,
    each_name,
    pass_globals,
    print_rows,
    prune_report,
    report_error,
    returns_code,
    template_flag,
)
from builder.commands._format import human_size, inspect_text, table

if TYPE_CHECKING:
    from runtime.containers import Container


def _each(g: Globals, refs: tuple[str, ...], fn: Callable[[Path, Container], str | None]) -> int:
    """Apply ``fn`` to each container; docker's habit: go on after a failure, exit 1 at the end."""
    from runtime.errors import SandboxError
    from runtime.lifecycle import container_store

    root = g.store().root
    cs = container_store(root)
    return each_name(refs, lambda ref: fn(root, cs.get(ref)), SandboxError)


# -- ps ---------------------------------------------------------------------------------------------
_PS_HEADERS = {"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND", "RunningFor": "CREATED",
               "Status": "STATUS", "Ports": "PORTS", "Names": "NAMES", "State": "STATE",
               "CreatedAt": "CREATED AT", "Labels": "LABELS", "Mounts": "MOUNTS", "Networks": "NETWORKS"}
_PS_COLUMNS = ("ID", "Image", "Command", "RunningFor", "Status", "Ports", "Names")


Row = tuple[Any, dict[str, Any]]


def _ps_filter(rows: list[Row], filters: tuple[str, ...]) -> list[Row]:
    from builder.errors import UsageError

    out = rows
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep:
            raise UsageError(f"bad format of filter (expected name=value): {f}")
        if key == "status":
            out = [(c, r) for c, r in out if r["State"] == value]
        elif key == "name":
            out = [(c, r) for c, r in out if re.search(value, r["Names"])]
        elif key == "id":
            out = [(c, r) for c, r in out if c.id.startswith(value)]
        elif key == "label":
            k, _, v = value.partition("=")
            out = [(c, r) for c, r in out if k in c.record.labels and (not v or c.record.labels[k] == v)]
        elif key == "ancestor":
            out = [(c, r) for c, r in out if value in (c.record.image, c.record.image_ref, c.record.image_id)
                   or c.record.image_id.removeprefix("sha256:").startswith(value)]
        elif key == "network":
            out = [(c, r) for c, r in out if value == c.record.network]
        else:
            raise UsageError(f"invalid filter {key!r}")
    return out


@click.command("ps")
@click.option("-a", "--all", "all_", is_flag=True, help="Show all containers (default shows just running).")
@click.option("-q", "--quiet", is_flag=True, help="Only display container IDs.")
@click.option("--no-trunc", is_flag=True, help="Don't truncate output.")
@click.option("-n", "--last", type=int, default=-1, help="Show n last created containers (all states).")
@click.option("-l", "--latest", is_flag=True, help="Show the latest created container (all states).")
@click.option("-f", "--filter", "filters", multiple=True,
              help="Filter: status=, name=, id=, label=, ancestor=, network=.")
@click.option("--format", "fmt", help="'table', 'json', or a Go-template subset ({{.Names}}).")
@pass_globals
@returns_code
def ps(g: Globals, all_: bool, quiet: bool, no_trunc: bool, last: int, latest: bool,
       filters: tuple[str, ...], fmt: str | None) -> int:
    """List containers."""
    from runtime.lifecycle import iter_containers, ps_row

    now = time.time()
    if latest:
        last = 1
    show_all = all_ or last > 0 or any(f.startswith("status=") for f in filters)
    rows = [(c, ps_row(c, now)) for c in iter_containers(g.store().root, all_=show_all)]
    rows = _ps_filter(rows, filters)
    if last > 0:
        rows = rows[:last]
    for c, r in rows:
        if no_trunc:
            r["ID"] = c.id
            r["Command"] = json.dumps(" ".join(c.record.argv))
    if quiet:
        for c, _ in rows:
            click.echo(c.id if no_trunc else c.short_id)
        return 0
    print_rows([r for _, r in rows], fmt, _PS_HEADERS, _PS_COLUMNS)
    return 0


# -- logs -------------------------------------------------------------------------------------------
def parse_since(text: str | None, now: float | None = None) -> float | None:
    """docker's --since/--until: RFC 3339, a Unix timestamp, or a duration (10m, 1h30m, 2s)."""
    from runtime.containers import parse_rfc3339

    if not text:
        return None
    now = time.time() if now is None else now
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    m = re.fullmatch(r"((?:\d+(?:\.\d+)?(?:ns|us|ms|s|m|h))+)", text)
    if m:
        units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
        total = sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", text))
        return now - total
    if re.fullmatch(r"\d{4}-\d\d-\d\d", text):
        text += "T00:00:00Z"
    elif re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?", text):
        text += "Z"
    ts = parse_rfc3339(text)
    if ts is None:
        from builder.errors import UsageError

        raise UsageError(f"invalid time {text!r}: want RFC 3339, a Unix timestamp or a duration like 10m")
    return ts


@click.command("logs")
@click.argument("container")
@click.option("-f", "--follow", is_flag=True, help="Follow log output.")
@click.option("-n", "--tail", default="all", help="Number of lines to show from the end of the logs.")
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps.")
@click.option("--since", help="Show logs since a timestamp (2013-01-02T13:23:37Z) or relative (42m).")
@click.option("--until", help="Show logs before a timestamp or relative time.")
@click.option("--details", is_flag=True, hidden=True)
@pass_globals
@returns_code
def logs(g: Globals, container: str, follow: bool, tail: str, timestamps: bool, since: str | None,
         until: str | None, details: bool) -> int:
    """Fetch the logs of a container."""
    from builder.errors import UsageError
    from runtime.containers import LIVE
    from runtime.errors import SandboxError
    from runtime.lifecycle import container_store
    from runtime.monitor import read_log

    del details
    c = container_store(g.store().root).get(container)
    if tail == "all" or tail == "-1":
        n = None
    else:
        try:
            n = int(tail)
        except ValueError:
            raise UsageError(f"invalid --tail {tail!r}: want a number or 'all'") from None

    def alive() -> bool:
        try:
            return c.state().status in LIVE
        except SandboxError:      # removed while we follow it
            return False

    out, err = sys.stdout, sys.stderr
    try:
        for e in read_log(c.log_path, tail=n, since=parse_since(since), until=parse_since(until),
                          follow=follow, alive=alive):
            stream = err if e.stream == "stderr" else out
            stream.write((e.time + " " if timestamps else "") + e.log)
            if follow:
                stream.flush()
    except KeyboardInterrupt:
        return 0
    return 0


# -- start / stop / kill / restart / rm / pause / unpause / wait -----------------------------------------
@click.command("stop")
@click.argument("containers", nargs=-1, required=True)
@click.option("-t", "--time", "--timeout", "timeout", type=int, default=None,
              help="Seconds to wait before killing the container (default: its stop timeout, 10).")
@click.option("-s", "--signal", "sig", help="Signal to send (default: the image's STOPSIGNAL or SIGTERM).")
@pass_globals
@returns_code
def stop(g: Globals, containers: tuple[str, ...], timeout: int | None, sig: str | None) -> int:
    """Stop one or more running containers (STOPSIGNAL, then SIGKILL after the timeout)."""
    from dataclasses import replace

    from runtime.lifecycle import stop_container

    def one(root: Path, c: Container) -> str:
        del root
        if sig:
            c._record = replace(c.record, stop_signal=sig)
        stop_container(c, timeout)
        return c.name

    return _each(g, containers, one)


@click.command("kill")
@click.argument("containers", nargs=-1, required=True)
@click.option("-s", "--signal", "sig", default="KILL", show_default=True, help="Signal to send.")
@pass_globals
@returns_code
def kill(g: Globals, containers: tuple[str, ...], sig: str) -> int:
    """Kill one or more running containers."""
    from runtime.lifecycle import kill_container

    def one(root: Path, c: Container) -> str:
        del root
        kill_container(c, sig)
        return c.name

    return _each(g, containers, one)


@click.command("start")
@click.argument("containers", nargs=-1, required=True)
@click.option("-a", "--attach", is_flag=True, help="Attach STDOUT/STDERR (follow the output) and "
              "exit with the container's code.")
@click.option("-i", "--interactive", is_flag=True, hidden=True)
@pass_globals
@returns_code
def start(g: Globals, containers: tuple[str, ...], attach: bool, interactive: bool) -> int:
    """Start one or more stopped containers (same writable layer)."""
    from runtime.lifecycle import start_container

    del interactive
    if attach:
        if len(containers) != 1:
            from builder.errors import UsageError

            raise UsageError("you cannot start and attach multiple containers at once")
        return _start_attached(g, containers[0])

    def one(root: Path, c: Container) -> str:
        start_container(root, c)
        return c.name

    return _each(g, containers, one)


def _start_attached(g: Globals, ref: str) -> int:
    from runtime.containers import LIVE
    from runtime.lifecycle import container_store, start_container
    from runtime.monitor import read_log

    root = g.store().root
    c = container_store(root).get(ref)
    size = c.log_path.stat().st_size if c.log_path.exists() else 0
    start_container(root, c)

    def alive() -> bool:
        return c.state().status in LIVE

    # follow only what this run writes: the entries after the old end of the file
    for e in read_log(c.log_path, offset=size, follow=True, alive=alive):
        (sys.stderr if e.stream == "stderr" else sys.stdout).write(e.log)
        sys.stdout.flush()
    return c.state().exit_code


@click.command("restart")
@click.argument("containers", nargs=-1, required=True)
@click.option("-t", "--time", "--timeout", "timeout", type=int, default=None,
              help="Seconds to wait before killing the container.")
@pass_globals
@returns_code
def restart(g: Globals, containers: tuple[str, ...], timeout: int | None) -> int:
    """Restart one or more containers."""
    from runtime.lifecycle import restart_container

    def one(root: Path, c: Container) -> str:
        restart_container(root, c, timeout)
        return c.name

    return _each(g, containers, one)


@click.command("rm")
@click.argument("containers", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Force the removal of a running container (SIGKILL).")
@click.option("-v", "--volumes", is_flag=True, help="Remove anonymous volumes associated with the container.")
@pass_globals
@returns_code
def rm(g: Globals, containers: tuple[str, ...], force: bool, volumes: bool) -> int:
    """Remove one or more containers."""
    from runtime.errors import SandboxError
    from runtime.lifecycle import container_store, remove_container

    root = g.store().root
    cs = container_store(root)

    def one(ref: str) -> str:
        remove_container(root, cs.get(ref), force=force, volumes=volumes)
        return ref            # docker prints the name as given

    return each_name(containers, one, SandboxError)


@click.command("pause")
@click.argument("containers", nargs=-1, required=True)
@pass_globals
@returns_code
def pause(g: Globals, containers: tuple[str, ...]) -> int:
    """Pause all processes within one or more containers (cgroup freezer)."""
    from runtime.lifecycle import pause_container

    def one(root: Path, c: Container) -> str:
        del root
        pause_container(c)
        return c.name

    return _each(g, containers, one)


@click.command("unpause")
@click.argument("containers", nargs=-1, required=True)
@pass_globals
@returns_code
def unpause(g: Globals, containers: tuple[str, ...]) -> int:
    """Unpause all processes within one or more containers."""
    from runtime.lifecycle import unpause_container

    def one(root: Path, c: Container) -> str:
        del root
        unpause_container(c)
        return c.name

    return _each(g, containers, one)


@click.command("wait")
@click.argument("containers", nargs=-1, required=True)
@pass_globals
@returns_code
def wait(g: Globals, containers: tuple[str, ...]) -> int:
    """Block until one or more containers stop, then print their exit codes."""
    from runtime.lifecycle import wait_stopped

    def one(root: Path, c: Container) -> str:
        del root
        return str(wait_stopped(c, None).exit_code)

    return _each(g, containers, one)


@click.command("port")
@click.argument("container")
@click.argument("private_port", required=False)
@pass_globals
@returns_code
def port(g: Globals, container: str, private_port: str | None) -> int:
    """List port mappings of a container."""
    from runtime.lifecycle import container_store

    c = container_store(g.store().root).get(container)
    want = None
    if private_port:
        num, _, proto = private_port.partition("/")
        want = (int(num), proto or "tcp")
    found = False
    for settings in c.state().networks.values():
        for p in settings.get("Ports", ()):
            if want and (p["ContainerPort"], p["Proto"]) != want:
                continue
            found = True
            prefix = "" if want else f"{p['ContainerPort']}/{p['Proto']} -> "
            click.echo(f"{prefix}{p['HostIp']}:{p['HostPort']}")
    if want and not found:
        report_error(f"no public port '{private_port}' published for {container}")
        return 1
    return 0


# -- stats / top ------------------------------------------------------------------------------------
def _iec(n: float) -> str:
    """docker's units.BytesSize: binary units, 4 significant digits ('1.5MiB')."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.4g}{units[i]}"


def _net_io(c: Container) -> tuple[int, int]:
    st = c.state()
    rx = tx = 0
    if not st.pid:
        return 0, 0
    try:
        lines = Path(f"/proc/{st.pid}/net/dev").read_text().splitlines()[2:]
    except OSError:
        return 0, 0
    for line in lines:
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            continue
        f = rest.split()
        rx, tx = rx + int(f[0]), tx + int(f[8])
    return rx, tx


_STATS_HEADERS = {"ID": "CONTAINER ID", "Name": "NAME", "CPUPerc": "CPU %", "MemUsage": "MEM USAGE / LIMIT",
                  "MemPerc": "MEM %", "NetIO": "NET I/O", "BlockIO": "BLOCK I/O", "PIDs": "PIDS",
                  "Container": "CONTAINER"}


@click.command("stats")
@click.argument("containers", nargs=-1)
@click.option("-a", "--all", "all_", is_flag=True, help="Show all containers (default shows just running).")
@click.option("--no-stream", is_flag=True, help="Print one sample and exit.")
@click.option("--no-trunc", is_flag=True, help="Don't truncate output.")
@click.option("--format", "fmt", help="'table', 'json', or a Go-template subset.")
@pass_globals
@returns_code
def stats(g: Globals, containers: tuple[str, ...], all_: bool, no_stream: bool, no_trunc: bool,
          fmt: str | None) -> int:
    """Display a live stream (or with --no-stream one sample) of container resource usage."""
    from runtime.lifecycle import container_stats, container_store, iter_containers

    root = g.store().root
    cs = container_store(root)
    targets = [cs.get(r) for r in containers] if containers else list(iter_containers(root, all_=all_))
    while True:
        rows = []
        for c in targets:
            s = container_stats(c)
            rx, tx = _net_io(c)
            rows.append({"ID": c.id if no_trunc else c.short_id, "Container": c.short_id, "Name": c.name,
                         "CPUPerc": f"{s.cpu_percent:.2f}%",
                         "MemUsage": f"{_iec(s.mem_usage)} / {_iec(s.mem_limit)}",
                         "MemPerc": f"{s.mem_percent:.2f}%",
                         "NetIO": f"{human_size(rx)} / {human_size(tx)}", "BlockIO": "0B / 0B",
                         "PIDs": str(s.pids)})
        if (not fmt or fmt == "table") and not no_stream and sys.stdout.isatty():
            click.echo("\x1b[2J\x1b[H", nl=False)          # a live table redraws in place
        print_rows(rows, fmt, _STATS_HEADERS,
                   ("ID", "Name", "CPUPerc", "MemUsage", "MemPerc", "NetIO", "BlockIO", "PIDs"))
        if no_stream:
            return 0
        try:
            time.sleep(0.5)
        except KeyboardInterrupt:
            return 0


@click.command("top")
@click.argument("container")
@click.argument("ps_options", nargs=-1)
@pass_globals
@returns_code
def top(g: Globals, container: str, ps_options: tuple[str, ...]) -> int:
    """Display the running processes of a container (seen from the host)."""
    from runtime.containers import ContainerStateError
    from runtime.lifecycle import container_store, container_top

    del ps_options
    c = container_store(g.store().root).get(container)
    if c.state().status not in ("running", "paused"):
        raise ContainerStateError(f"container {c.name} is not running")
    header, rows = container_top(c)
    click.echo(table([header] + rows), nl=False)
    return 0


# -- cp ---------------------------------------------------------------------------------------------
def _split_cp(arg: str) -> tuple[str | None, str]:
    if arg.startswith(("/", ".")) or ":" not in arg:
        return None, arg
    name, _, path = arg.partition(":")
    return name, path or "/"


@click.command("cp")
@click.argument("src")
@click.argument("dest")
@click.option("-a", "--archive", is_flag=True, hidden=True)
@click.option("-L", "--follow-link", is_flag=True, hidden=True)
@click.option("-q", "--quiet", is_flag=True, hidden=True)
@pass_globals
@returns_code
def cp(g: Globals, src: str, dest: str, archive: bool, follow_link: bool, quiet: bool) -> int:
    """Copy files/folders between a container and the local filesystem
    (CONTAINER:SRC_PATH DEST_PATH or SRC_PATH CONTAINER:DEST_PATH)."""
    from builder.errors import UsageError
    from runtime.lifecycle import container_store, copy_from_container, copy_to_container

    del archive, follow_link, quiet
    s_ctr, s_path = _split_cp(src)
    d_ctr, d_path = _split_cp(dest)
    if (s_ctr is None) == (d_ctr is None):
        raise UsageError("cp: exactly one of SRC and DEST must be CONTAINER:PATH")
    root = g.store().root
    cs = container_store(root)
    if s_ctr is not None:
        copy_from_container(cs.get(s_ctr), s_path, Path(d_path), root=root)
    else:
        assert d_ctr is not None
        copy_to_container(cs.get(d_ctr), Path(s_path), d_path, root=root)
    return 0


# -- exec -------------------------------------------------------------------------------------------
@click.command("exec", context_settings={"allow_interspersed_args": False})
@click.argument("container")
@click.argument("command", nargs=-1, required=True)
@click.option("-i", "--interactive", is_flag=True, help="Keep STDIN open.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY.")
@click.option("-d", "--detach", is_flag=True, help="Run the command in the background.")
@click.option("-e", "--env", "env", multiple=True, help="Set environment variables (KEY=VALUE or KEY).")
@click.option("--env-file", multiple=True, help="Read environment variables from a file.")
@click.option("-u", "--user", help="Username or UID (format: <name|uid>[:<group|gid>]).")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.option("--privileged", is_flag=True, help="Give extended privileges to the command.")
@pass_globals
@returns_code
def exec_(g: Globals, container: str, command: tuple[str, ...], interactive: bool, tty: bool, detach: bool,
          env: tuple[str, ...], env_file: tuple[str, ...], user: str | None, workdir: str | None,
          privileged: bool) -> int:
    """Execute a command in a running container (joins its namespaces and cgroup)."""
    import os

    from runtime.exec import ExecOptions, exec_in_container
    from runtime.lifecycle import container_store

    envs: list[str] = []
    for path in env_file:
        for line in Path(path).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                envs.append(line)
    for e in env:
        if "=" not in e:
            value = os.environ.get(e)
            if value is None:
                continue
            e = f"{e}={value}"
        envs.append(e)
    root = g.store().root
    c = container_store(root).get(container)
    opts = ExecOptions(argv=tuple(command), env=tuple(envs), user=user, workdir=workdir, tty=tty,
                       interactive=interactive, detach=detach, privileged=privileged)
    return exec_in_container(root, c, opts)


# -- inspect (containers) ---------------------------------------------------------------------------
def inspect_containers(g: Globals, names: tuple[str, ...],
                       fmt: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Views for the names that are containers, and the names that are not (for images.inspect)."""
    from runtime.containers import ContainerNotFound
    from runtime.lifecycle import container_store, inspect_container

    root = g.store().root
    cs = container_store(root)
    views, rest = [], []
    for n in names:
        try:
            views.append(inspect_container(root, cs.get(n)))
        except ContainerNotFound:
            rest.append(n)
    del fmt
    return views, rest


@click.command("inspect")
@click.argument("containers", nargs=-1, required=True)
@click.option("-f", "--format", "fmt", help="'json' (default) or a Go-template subset ({{.State.Status}}).")
@click.option("-s", "--size", is_flag=True, hidden=True)
@pass_globals
@returns_code
def container_inspect(g: Globals, containers: tuple[str, ...], fmt: str | None, size: bool) -> int:
    """Display detailed information on one or more containers."""
    del size
    views, missing = inspect_containers(g, containers, fmt)
    with template_flag():
        click.echo(inspect_text(views, fmt), nl=False)
    for m in missing:
        report_error(f"no such container: {m}")
    return 1 if missing else 0


# -- container prune / group ------------------------------------------------------------------------
@click.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@pass_globals
@returns_code
def container_prune(g: Globals, force: bool) -> int:
    """Remove all stopped containers."""
    from runtime.lifecycle import prune_containers

    if not force and not confirm("WARNING! This will remove all stopped containers."):
        return 0
    removed = prune_containers(g.store().root)
    prune_report("Deleted Containers:", removed, "0B")
    return 0


def _alias(cmd: click.Command, name: str) -> click.Command:
    """The same command under another name (for `container ls`/`container list`)."""
    import copy

    new = copy.copy(cmd)
    new.name = name
    return new


@click.group("container")
def container() -> None:
    """Manage containers."""


for _cmd in (ps, logs, stop, kill, start, restart, rm, pause, unpause, wait, port, stats, top, cp, exec_,
             container_prune, container_inspect):
    container.add_command(_cmd)
container.add_command(_alias(ps, "ls"))
container.add_command(_alias(ps, "list"))


def _run_in_group() -> None:
    """`container run` / `container create` are registered when the run verb exists."""
    import importlib

    try:
        mod = importlib.import_module("builder.commands.run")
    except ImportError:
        return
    for attr in ("run", "create"):
        cmd = getattr(mod, attr, None)
        if isinstance(cmd, click.Command):
            container.add_command(cmd)


_run_in_group()
