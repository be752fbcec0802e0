"""`pybuild run IMAGE [COMMAND [ARG...]]`: docker's flags and meaning, over runtime.run.

Only click and the stdlib at module scope (the run path must start fast: the library is
imported inside the command, the registry client only when an image must be pulled).
Exit codes: the container's own (128+n for a signal), 125 for pybuild's own failures and bad
flags, 126 when the command cannot be executed, 127 when it is not found.
"""

from __future__ import annotations

import os
from typing import Any

import click

from builder.commands import Globals, pass_globals, returns_code

_CTX = {"help_option_names": ["--help"],      # -h is --hostname, as in docker
        "allow_interspersed_args": False}     # everything after IMAGE belongs to the command


@click.command("run", context_settings=_CTX)
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--rm", is_flag=True, help="Remove the container when it exits.")
@click.option("-i", "--interactive", is_flag=True, help="Keep STDIN open.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY.")
@click.option("-d", "--detach", is_flag=True, help="Run in the background and print the container ID.")
@click.option("--name", help="Assign a name to the container.")
@click.option("-e", "--env", "env", multiple=True, help="Set environment variables (KEY=VALUE or KEY).")
@click.option("--env-file", multiple=True, type=click.Path(dir_okay=False),
              help="Read a file of variables.")
@click.option("-v", "--volume", "volumes", multiple=True, help="Bind mount a volume: [SRC:]DST[:OPTS].")
@click.option("--mount", "mounts", multiple=True, help="Attach a mount: type=bind|tmpfs|volume,...")
@click.option("--tmpfs", multiple=True, help="Mount a tmpfs: PATH[:OPTIONS].")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.option("-u", "--user", help="User: name|uid[:group|gid].")
@click.option("--entrypoint", help="Overwrite the image's ENTRYPOINT (a single string).")
@click.option("-h", "--hostname", help="Container host name.")
@click.option("--network", "--net", "network", default=None,
              help="none, host, or a network (default: bridge).")
@click.option("--network-alias", multiple=True, help="Add a network-scoped alias for the container.")
@click.option("-p", "--publish", multiple=True, help="Publish a port: [IP:][HOST:]CTR[/PROTO].")
@click.option("-m", "--memory", help="Memory limit (e.g. 32m, 1g).")
@click.option("--memory-swap", help="Memory + swap limit; -1 for unlimited swap.")
@click.option("--cpus", help="Number of CPUs (CFS quota), e.g. 0.5.")
@click.option("-c", "--cpu-shares", type=int, help="CPU shares (relative weight).")
@click.option("--pids-limit", type=int, help="Process limit (-1: unlimited).")
@click.option("--read-only", is_flag=True, help="Mount the root filesystem read-only.")
@click.option("--init", "init", is_flag=True,
              help="Run an init inside the container that reaps and forwards signals.")
@click.option("--pull", default="missing", type=click.Choice(["missing", "always", "never"]),
              show_default=True, help="Pull the image before running.")
@click.option("--platform", help="Platform when pulling, e.g. linux/amd64.")
@click.option("--runtime", help="OCI runtime for this container: runc or crun (default: built-in).")
@click.option("--cap-add", multiple=True, help="Add a Linux capability (or ALL).")
@click.option("--cap-drop", multiple=True, help="Drop a Linux capability (or ALL).")
@click.option("--privileged", is_flag=True, help="Give extended privileges (all caps, host devices).")
@click.option("--userns", default="", help="User namespace: host (root's default); rootless runs "
              "always get one.")
@click.option("--security-opt", multiple=True,
              help="no-new-privileges[=true|false], seccomp=unconfined.")
@click.option("--restart", default="no", help="Restart policy for -d: no, on-failure[:N], always.")
@click.option("-l", "--label", multiple=True, help="Set metadata (KEY=VALUE).")
@click.option("--stop-signal", help="Signal to stop the container.")
@click.option("--stop-timeout", type=int, default=10, help="Seconds to wait before killing.")
@click.option("--ulimit", multiple=True, help="ulimit: NAME=SOFT[:HARD], e.g. nofile=1024:2048.")
@pass_globals
@returns_code
def run(g: Globals, image: str, command: tuple[str, ...], **flags: Any) -> int:
    """Run a command in a new container."""
    from registry.errors import RegistryError
    from runtime.errors import SandboxError
    from runtime.run import run_image

    try:
        req = _request(image, command, flags)
    except (ValueError, RegistryError, SandboxError) as exc:
        return _fail(exc)
    store = g.store()

    def notify(msg: str) -> None:
        click.echo(msg, err=True)

    try:
        if req.detach:
            return _detach(g, req, notify)
        return int(run_image(store, req, notify=notify))
    except RegistryError as exc:
        # docker: every failure to set the container up (image included) is exit 125
        return _fail(exc)


def _fail(exc: Exception) -> int:
    click.echo(f"error: {exc}", err=True)
    hint = getattr(exc, "hint", None)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    return 125


def _detach(g: Globals, req: Any, notify: Any) -> int:
    from runtime.monitor import spawn
    from runtime.run import create_container

    c = create_container(g.store(), req, notify=notify)
    spawn(g.store().root, c)
    click.echo(c.id)
    return 0


def _request(image: str, command: tuple[str, ...], f: dict[str, Any]) -> Any:
    from runtime import spec as S
    from runtime.cgroups import Resources
    from runtime.containers import MountSpec
    from runtime.run import RunRequest

    env: list[str] = []
    for path in f["env_file"]:
        try:
            with open(path, encoding="utf-8") as fh:
                env += S.parse_env_file(fh.read(), os.environ)
        except OSError as exc:
            raise S.SpecError(f"--env-file {path}: {exc.strerror}") from None
    for item in f["env"]:
        value = S.parse_env_arg(item, os.environ)
        if value is not None:
            env.append(value)

    mounts: list[MountSpec] = []
    for text in f["volumes"]:
        from runtime.volumes import parse_volume_flag

        mounts.append(parse_volume_flag(text))
    for text in f["mounts"]:
        m = S.parse_mount(text)
        mounts.append(MountSpec(m["type"], m["target"], m.get("source", ""), readonly=m["readonly"],
                                options=tuple(m.get("options") or ())))
    for text in f["tmpfs"]:
        dest, _, opts = text.partition(":")
        mounts.append(MountSpec("tmpfs", S.parse_tmpfs(text)["destination"], "",
                                options=tuple(o for o in opts.split(",") if o)))

    resources = Resources(
        memory=S.parse_bytes(f["memory"], what="--memory") if f["memory"] else None,
        memory_swap=_swap(f["memory_swap"]),
        cpu_quota=S.parse_cpus(f["cpus"]) if f["cpus"] else None,
        cpu_shares=f["cpu_shares"],
        pids_limit=f["pids_limit"],
    )
    resources.validate()

    nnp, seccomp = True, True
    for opt in f["security_opt"]:
        key, sep, value = opt.replace(":", "=", 1).partition("=") if opt.startswith("seccomp") \
            else opt.partition("=")
        if key == "no-new-privileges":
            nnp = value.lower() not in ("false", "0") if sep else True
        elif key == "seccomp":
            if value != "unconfined":
                raise S.SpecError(f"--security-opt seccomp={value}: only 'unconfined' is supported "
                                  "(the default profile is built in)")
            seccomp = False
        else:
            raise S.SpecError(f"unsupported --security-opt {opt!r}")

    rlimits = []
    for text in f["ulimit"]:
        name, _, rest = text.partition("=")
        soft, _, hard = rest.partition(":")
        try:
            s_val = -1 if soft == "-1" else int(soft)
            h_val = s_val if not hard else (-1 if hard == "-1" else int(hard))
        except ValueError:
            raise S.SpecError(f"invalid --ulimit {text!r}: want NAME=SOFT[:HARD]") from None
        inf = 2**64 - 1
        rlimits.append((f"RLIMIT_{name.upper()}", inf if s_val < 0 else s_val, inf if h_val < 0 else h_val))

    publish = []
    for text in f["publish"]:
        from runtime.network import parse_publish

        publish += parse_publish(text)
    network = f["network"]
    if network is None:
        network = _default_network()
    if network in ("private",):
        network = "none"

    entrypoint = None
    if f["entrypoint"] is not None:
        entrypoint = (f["entrypoint"],) if f["entrypoint"] else ()
    labels = {}
    for item in f["label"]:
        k, _, v = item.partition("=")
        labels[k] = v
    opts = S.RunOptions(
        args=tuple(command), entrypoint=entrypoint, env=tuple(env), user=f["user"],
        workdir=f["workdir"], hostname=f["hostname"], network=network, read_only=f["read_only"],
        tty=f["tty"], init=f["init"], cap_add=tuple(f["cap_add"]), cap_drop=tuple(f["cap_drop"]),
        privileged=f["privileged"], no_new_privileges=nnp, seccomp=seccomp, resources=resources,
        rlimits=tuple(rlimits))
    return RunRequest(image=image, options=opts, name=f["name"], rm=f["rm"],
                      interactive=f["interactive"], detach=f["detach"], pull=f["pull"],
                      platform=f["platform"], runtime=f["runtime"], userns=f["userns"],
                      mounts=tuple(mounts), publish=tuple(publish),
                      network_aliases=tuple(f["network_alias"]), restart=f["restart"],
                      labels=labels, stop_signal=f["stop_signal"], stop_timeout=f["stop_timeout"])


def _swap(text: str | None) -> int | None:
    from runtime import spec as S

    if not text:
        return None
    return -1 if text == "-1" else S.parse_bytes(text, what="--memory-swap")


def _default_network() -> str:
    """docker's default is the bridge network; $PYBUILD_NETWORK overrides (e.g. none)."""
    return os.environ.get("PYBUILD_NETWORK") or "bridge"
