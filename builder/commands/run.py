"""`pybuild run IMAGE [COMMAND [ARG...]]` over runtime.run, with docker's flags (``OPTIONS``, an option
table: builder.cli reads an ordinary line without click, tests/cli/test_run_fast.py checks parity;
the click command is built from the same table). Exit codes: the container's (128+n on a signal),
125 pybuild's own failure or a bad flag, 126 not executable, 127 not found. Stdlib at module scope;
runtime (and the registry client, only to pull) inside the command."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from builder.commands import Globals, report_error
from builder.commands._optable import FLAG, MULTI, VALUE, Arg, Opt, Verb, click_command
from builder.commands._optable import fast_parse as _fast_parse

if TYPE_CHECKING:
    import click

    from runtime.run import RunRequest
    from runtime.sandbox import Child

OPTIONS: tuple[Opt, ...] = (
    Opt(("--rm",), "rm", FLAG, "Remove the container when it exits."),
    Opt(("-i", "--interactive"), "interactive", FLAG, "Keep STDIN open."),
    Opt(("-t", "--tty"), "tty", FLAG, "Allocate a pseudo-TTY."),
    Opt(("-d", "--detach"), "detach", FLAG, "Run in the background and print the container ID."),
    Opt(("--name",), "name", VALUE, "Assign a name to the container."),
    Opt(("-e", "--env"), "env", MULTI, "Set environment variables (KEY=VALUE or KEY)."),
    Opt(("--env-file",), "env_file", MULTI, "Read a file of variables.", type="file"),
    Opt(("-v", "--volume"), "volumes", MULTI, "Bind mount a volume: [SRC:]DST[:OPTS]."),
    Opt(("--mount",), "mounts", MULTI, "Attach a mount: type=bind|tmpfs|volume,..."),
    Opt(("--tmpfs",), "tmpfs", MULTI, "Mount a tmpfs: PATH[:OPTIONS]."),
    Opt(("-w", "--workdir"), "workdir", VALUE, "Working directory inside the container."),
    Opt(("-u", "--user"), "user", VALUE, "User: name|uid[:group|gid]."),
    Opt(("--entrypoint",), "entrypoint", VALUE, "Overwrite the image's ENTRYPOINT (a single string)."),
    Opt(("-h", "--hostname"), "hostname", VALUE, "Container host name."),
    Opt(("--network", "--net"), "network", VALUE, "none, host, or a network (default: bridge)."),
    Opt(("--network-alias",), "network_alias", MULTI, "Add a network-scoped alias for the container."),
    Opt(("-p", "--publish"), "publish", MULTI, "Publish a port: [IP:][HOST:]CTR[/PROTO]."),
    Opt(("-m", "--memory"), "memory", VALUE, "Memory limit (e.g. 32m, 1g)."),
    Opt(("--memory-swap",), "memory_swap", VALUE, "Memory + swap limit; -1 for unlimited swap."),
    Opt(("--cpus",), "cpus", VALUE, "Number of CPUs (CFS quota), e.g. 0.5."),
    Opt(("-c", "--cpu-shares"), "cpu_shares", VALUE, "CPU shares (relative weight).", type="int"),
    Opt(("--pids-limit",), "pids_limit", VALUE, "Process limit (-1: unlimited).", type="int"),
    Opt(("--read-only",), "read_only", FLAG, "Mount the root filesystem read-only."),
    Opt(("--init",), "init", FLAG,
        "Run an init inside the container that reaps and forwards signals."),
    Opt(("--pull",), "pull", VALUE, "Pull the image before running.", default="missing", type="choice",
        choices=("missing", "always", "never"), show_default=True),
    Opt(("--platform",), "platform", VALUE, "Platform when pulling, e.g. linux/amd64."),
    Opt(("--runtime",), "runtime", VALUE,
        "OCI runtime for this container: runc or crun (default: built-in)."),
    Opt(("--cap-add",), "cap_add", MULTI, "Add a Linux capability (or ALL)."),
    Opt(("--cap-drop",), "cap_drop", MULTI, "Drop a Linux capability (or ALL)."),
    Opt(("--privileged",), "privileged", FLAG, "Give extended privileges (all caps, host devices)."),
    Opt(("--userns",), "userns", VALUE, "User namespace: host (root's default); rootless runs "
        "always get one.", default=""),
    Opt(("--security-opt",), "security_opt", MULTI,
        "no-new-privileges[=true|false], seccomp=unconfined."),
    Opt(("--restart",), "restart", VALUE, "Restart policy for -d: no, on-failure[:N], always.", default="no"),
    Opt(("-l", "--label"), "label", MULTI, "Set metadata (KEY=VALUE)."),
    Opt(("--stop-signal",), "stop_signal", VALUE, "Signal to stop the container."),
    Opt(("--stop-timeout",), "stop_timeout", VALUE, "Seconds to wait before killing.", default=10,
        type="int"),
    Opt(("--ulimit",), "ulimit", MULTI, "ulimit: NAME=SOFT[:HARD], e.g. nofile=1024:2048."),
)


RUN = Verb("run", OPTIONS, (Arg("image"), Arg("command", nargs=-1)), interspersed=False)


def _build_command() -> click.Command:
    """The click command (imports click): for --help, bad flags and unusual command lines."""
    from builder.commands import pass_globals, returns_code

    def run(g: Globals, image: str, command: tuple[str, ...], **flags: Any) -> int:
        """Run a command in a new container."""
        return run_command(g, image, command, flags)

    # -h is --hostname, as in docker; everything after IMAGE belongs to the command
    return click_command(RUN, pass_globals(returns_code(run)),
                         context_settings={"help_option_names": ["--help"]})


def __getattr__(name: str) -> click.Command:
    """``run`` (the click command, for builder.cli's verb table) is built on first use."""
    if name == "run":
        cmd = _build_command()
        globals()["run"] = cmd
        return cmd
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the fast path: an ordinary `pybuild [--root DIR] run [OPTIONS] IMAGE [COMMAND...]` -------------
def fast_parse(args: list[str]) -> tuple[str | None, str, tuple[str, ...], dict[str, Any]] | None:
    """``(root, image, command, flags)`` for a whole pybuild command line whose verb is ``run``,
    read the way click reads it; None for anything left to click (help, global flags other
    than --root, unknown or malformed options, values click would reject)."""
    parsed = _fast_parse(args, RUN)
    if parsed is None:
        return None
    root, flags = parsed
    image, command = flags.pop("image"), flags.pop("command")
    return root, image, command, flags


def run_fast(args: list[str]) -> int | None:
    """Run ``args`` (a whole pybuild command line) without click, or None when click must."""
    parsed = fast_parse(args)
    if parsed is None:
        return None
    root, image, command, flags = parsed
    return int(run_command(Globals(root=root), image, command, flags) or 0)


def _say(text: str, *, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def run_command(g: Globals, image: str, command: tuple[str, ...], flags: dict[str, Any]) -> int:
    """The verb itself (both parsers end here)."""
    child: Child | None = None
    if not flags["detach"] and not flags["runtime"]:
        # Start the sandbox child first: its interpreter comes up while this process imports
        # the run path, resolves the image and prepares the rootfs (C11's re-exec'd child,
        # just earlier). Any problem here is left to the normal start to report.
        from runtime import sandbox

        try:
            child = sandbox.spawn_foreground(interactive=flags["interactive"], tty=flags["tty"])
        except Exception:  # noqa: BLE001
            child = None
    try:
        return _run(g, image, command, flags, child)
    finally:
        if child is not None:
            child.close()        # a no-op once the sandbox took it


def _run(g: Globals, image: str, command: tuple[str, ...], flags: dict[str, Any],
         child: Child | None) -> int:
    from registry.errors import RegistryError
    from runtime.errors import LayerError, SandboxError, UnsafePath
    from runtime.run import run_image

    try:
        req = _request(image, command, flags)
    except (ValueError, RegistryError, SandboxError) as exc:
        return _fail(exc)
    store = g.store()

    def notify(msg: str) -> None:
        _say(msg, err=True)

    try:
        if req.detach:
            return _detach(g, req, notify)
        return int(run_image(store, req, notify=notify, child=child))
    except (RegistryError, LayerError, UnsafePath) as exc:
        # docker: every failure to set the container up (image and its layers included) is 125
        return _fail(exc)


def _fail(exc: Exception) -> int:
    report_error(str(exc), getattr(exc, "hint", None))
    return 125


def _detach(g: Globals, req: RunRequest, notify: Callable[[str], None]) -> int:
    from runtime.monitor import spawn
    from runtime.run import create_container

    c = create_container(g.store(), req, notify=notify)
    spawn(g.store().root, c)
    _say(c.id)
    return 0


def _request(image: str, command: tuple[str, ...], f: dict[str, Any]) -> RunRequest:
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
