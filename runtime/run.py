"""``pybuild run``: image -> container record -> rootfs snapshot -> OCI spec -> sandbox -> exit code.
``run_image`` is the foreground path (the container's code; 125/126/127 for pybuild's failures),
``create_container`` the half shared with ``run -d`` (whose monitor starts it via container_launcher).
Start-up matters: a sandbox child spawned early, spec and mounts in memory, a --rm layer ephemeral.
Imports runtime.containers/spec/errors; registry and the rest of runtime inside functions."""

# A container's record lives in runtime.containers' format under $PYBUILD_ROOT/containers/<id>/:
# container.json, state.json, bundle/config.json (the OCI spec the sandbox, runc or crun consume) and
# hosts/hostname/resolv.conf. The registry client is imported only when an image must be pulled.

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime import spec as specmod
from runtime.containers import (
    Container,
    ContainerRecord,
    ContainerStore,
    MountSpec,
    PortMapping,
    process_start_time,
    rfc3339_nano,
)
from runtime.errors import SandboxError, UnsupportedHost

if TYPE_CHECKING:
    from registry.image import StoreImage
    from registry.store import DirStore
    from runtime.sandbox import Child, SandboxProcess
    from runtime.snapshots import Mount, Snapshotter

StdioArg = int | None


@dataclass(frozen=True)
class RunRequest:
    """Everything `pybuild run` decided from its flags (docker's meaning)."""

    image: str
    options: specmod.RunOptions = field(default_factory=specmod.RunOptions)
    name: str | None = None
    rm: bool = False
    interactive: bool = False
    detach: bool = False
    pull: str = "missing"                        # missing | always | never
    platform: str | None = None
    runtime: str | None = None                   # None: the built-in sandbox; "runc" | "crun"
    userns: str = ""                             # "" (default) | "host" | "auto[:size=N]"
    mounts: tuple[MountSpec, ...] = ()           # -v / --mount (bind, volume, tmpfs)
    publish: tuple[PortMapping, ...] = ()
    network_aliases: tuple[str, ...] = ()
    restart: str = "no"
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str | None = None
    stop_timeout: int = 10


class ImagePullError(SandboxError):
    pass


# -- image ---------------------------------------------------------------------------------------
def resolve_or_pull(store: DirStore, text: str, policy: str = "missing", *,
                    platform: str | None = None,
                    notify: Callable[[str], None] | None = None) -> StoreImage:
    """The stored image for ``text``; pulled first with --pull always, or when missing
    (--pull missing). --pull never only looks locally."""
    from registry.errors import ImageNotFound
    from registry.image import resolve_image

    if policy not in ("missing", "always", "never"):
        raise specmod.SpecError(f"invalid --pull {policy!r}: want missing, always or never")
    plat = None
    if platform:
        from registry.model import Platform

        plat = Platform.parse(platform)
    if policy != "always":
        try:
            return resolve_image(store, text, platform=plat)
        except ImageNotFound:
            if policy == "never":
                raise
    try:
        from registry.remote.pull import pull
    except ImportError:
        raise ImagePullError(f"image {text!r} is not in the local store and this build of pybuild "
                             "cannot pull", hint="load it with `pybuild load` or `pybuild import`"
                             ) from None
    from registry.reference import parse_reference

    ref = parse_reference(text)
    if notify is not None and policy == "missing":
        notify(f"Unable to find image '{ref.familiar()}' locally")
    pull(store, ref, platform=plat)
    return resolve_image(store, str(ref), platform=plat)


# -- snapshots -----------------------------------------------------------------------------------
def open_snapshotter(store_root: Path, driver: str | None = None) -> Snapshotter:
    from runtime import snapshots

    root = store_root / "snapshots"
    if driver == "copy":
        return snapshots.CopySnapshotter(root)
    if driver == "overlay":
        return snapshots.OverlaySnapshotter(root)
    return snapshots.default_snapshotter(root)


def prepare_snapshot(store: DirStore, image: StoreImage, key: str,
                     sn: Snapshotter | None = None, *,
                     ephemeral: bool = False) -> tuple[Snapshotter, list[Any]]:
    """The image's layers as committed snapshots (unpacked once, ever) and an active snapshot
    ``key`` on top; returns the snapshotter and the rootfs mounts. ``ephemeral``: see
    Snapshotter.prepare (a foreground ``run --rm`` layer)."""
    from runtime import rootfs

    sn = sn or open_snapshotter(store.root)
    mounts = rootfs.prepare_rootfs(store, sn, image.manifest, key, ephemeral=ephemeral,
                                   config=image.config)
    return sn, list(mounts)


# -- the container's files ---------------------------------------------------------------------------
def write_etc_files(c: Container, hostname: str, *, network: str) -> None:
    host_net = network == "host"
    host_hosts = ""
    if host_net:
        with contextlib.suppress(OSError):
            host_hosts = Path("/etc/hosts").read_text()
    try:
        host_resolv = Path("/etc/resolv.conf").read_text()
    except OSError:
        host_resolv = ""
    files = {"hostname": hostname + "\n",
             "hosts": specmod.hosts_file(hostname, host_network=host_net, host_hosts=host_hosts),
             "resolv.conf": specmod.resolv_conf(host_resolv, host_network=host_net)}
    for name, text in files.items():
        path = c.path(name)
        if not path.exists():    # the network code may have written entries already
            path.write_text(text)


def userns_mapping(mode: str) -> Any:
    """The IdMapping for ``--userns`` (None = share the host's user namespace).

    Rootless: always a user namespace (container root = the user, plus the /etc/subuid range).
    Root: ``host`` (the default). ``auto`` as root is refused: the image's layers are unpacked
    with real root ownership, so inside a remapped namespace they would belong to nobody and
    the container could not write its own rootfs; that needs idmapped lower layers (or a
    per-mapping chowned snapshot chain), which pybuild does not do yet."""
    rootless = os.geteuid() != 0
    kind, _, _arg = mode.partition(":")
    if kind not in ("", "host", "auto", "private"):
        raise specmod.SpecError(f"invalid --userns {mode!r}: want host or auto")
    if not rootless:
        if kind == "auto":
            raise UnsupportedHost("--userns=auto as root is not supported yet: the image layers are "
                                  "owned by the host's root and would be unwritable in a remapped "
                                  "user namespace (idmapped layers are not implemented)",
                                  hint="run pybuild as an unprivileged user for a user-namespaced "
                                       "container, or use --userns=host")
        return None
    if kind == "host":
        raise UnsupportedHost("--userns=host: a rootless container always has a user namespace")
    from runtime import idmap

    return idmap.rootless_mapping()


def mount_entries(store_root: Path, mounts: Sequence[MountSpec]) -> list[dict[str, Any]]:
    """MountSpecs (-v/--mount/--tmpfs, as the record keeps them) -> OCI mounts."""
    out: list[dict[str, Any]] = []
    vstore = None
    for m in mounts:
        if m.type == "tmpfs":
            out.append(specmod.tmpfs_mount(m.destination, list(m.options)))
            continue
        if m.type == "volume":
            from runtime.volumes import VolumeStore, host_source

            vstore = vstore or VolumeStore(store_root / "volumes")
            src = str(host_source(vstore, m))
        else:
            src = m.source
        opts = [o for o in m.options if o in ("private", "rprivate", "shared", "rshared", "slave",
                                              "rslave", "nosuid", "nodev", "noexec")]
        out.append(specmod.bind_mount(src, m.destination, readonly=m.readonly, options=opts))
    return out


def build_container_spec(store_root: Path, c: Container, image_config: Any,
                         options: specmod.RunOptions, idmap: Any) -> dict[str, Any]:
    rootfs_dir = c.path("rootfs")
    rootfs_dir.mkdir(exist_ok=True)
    opts = replace(options, mounts=tuple(options.mounts) + tuple(mount_entries(store_root, c.record.mounts)))
    return specmod.build_spec(image_config, opts, root_path=str(rootfs_dir.resolve()),
                              state_dir=str(c.dir.resolve()), container_id=c.id, idmap=idmap,
                              rootless=os.geteuid() != 0)


def create_container(store: DirStore, req: RunRequest, *,
                     notify: Callable[[str], None] | None = None) -> Container:
    """Resolve (or pull) the image, prepare its rootfs snapshot, write the record and the OCI
    bundle. The container is in state "created"; nothing runs yet."""
    return _create(store, req, notify=notify)[0]


def _create(store: DirStore, req: RunRequest, *, notify: Callable[[str], None] | None = None,
            ephemeral: bool = False) -> tuple[Container, dict[str, Any], list[Mount]]:
    """create_container, also returning the OCI spec and the rootfs mounts it wrote."""
    image = resolve_or_pull(store, req.image, req.pull, platform=req.platform, notify=notify)
    config = image.config.config
    opts = req.options
    idmap = userns_mapping(req.userns)
    network = opts.network or "none"
    if req.runtime and req.runtime not in ("runc", "crun"):
        raise specmod.SpecError(f"unknown --runtime {req.runtime!r}: want runc or crun")
    if req.detach and req.runtime:
        raise specmod.SpecError("--runtime with -d is not supported (the monitor runs the built-in sandbox)")
    cstore = ContainerStore(store.subdir("containers"))
    cid = cstore.new_id()
    if network == "host" and opts.hostname is None:
        opts = replace(opts, hostname=os.uname().nodename)     # socket.gethostname()
    hostname = opts.hostname or cid[:12]
    opts = replace(opts, hostname=hostname)
    mounts = tuple(req.mounts)
    if any(m.type == "volume" for m in mounts) or config.volumes:
        from runtime.volumes import VolumeStore, plan_mounts

        mounts = plan_mounts(VolumeStore(store.subdir("volumes")), mounts, config.volumes)
    key = f"container-{cid}"
    record = ContainerRecord(
        id=cid, name=req.name or "", image=req.image, image_id=str(image.id),
        image_ref=image.names[0] if image.names else "",
        argv=tuple(specmod.command(config.entrypoint, config.cmd, opts.entrypoint, opts.args)),
        env=tuple(opts.env), user=opts.user if opts.user is not None else config.user,
        working_dir=opts.workdir or config.working_dir or "/", hostname=hostname, tty=opts.tty,
        interactive=req.interactive, snapshot_key=key, mounts=mounts, network=network,
        network_aliases=tuple(req.network_aliases), ports=tuple(req.publish), restart=req.restart,
        stop_signal=req.stop_signal or config.stop_signal or "SIGTERM",
        stop_timeout=req.stop_timeout, auto_remove=req.rm, labels=dict(req.labels),
        resources={k: v for k, v in asdict(opts.resources).items() if v is not None},
        run={"launcher": "sandbox", "runtime": req.runtime or "", "userns": req.userns,
             "rootless": os.geteuid() != 0},
    )
    record = replace(record, manifest_digest=str(image.digest))
    sn = open_snapshotter(store.root)
    record = replace(record, snapshotter=getattr(sn, "driver", ""))
    c = cstore.create(record)
    try:
        _, rootfs_mounts = prepare_snapshot(store, image, key, sn, ephemeral=ephemeral)
        write_etc_files(c, hostname, network=network)
        spec = build_container_spec(store.root, c, config, opts, idmap)
        bundle = c.path("bundle")
        bundle.mkdir(exist_ok=True)
        # (no indent: json's C encoder only serves indent=None; ~1 ms less per container)
        (bundle / "config.json").write_text(json.dumps(spec))
    except BaseException:
        with contextlib.suppress(Exception):  # noqa: BLE001 - best-effort undo
            _remove(store.root, c)
        raise
    return c, spec, rootfs_mounts


def _remove(store_root: Path, c: Container) -> None:
    """--rm: drop the writable layer and the record (the lean path when no network or
    volume state needs the lifecycle's full removal)."""
    r = c.record
    if r.network not in ("none", "host", "") or any(m.type == "volume" for m in r.mounts):
        from runtime.lifecycle import remove_container

        remove_container(store_root, c, volumes=True, force=True, monitor=True)
        return
    if r.snapshot_key:
        with contextlib.suppress(SandboxError, KeyError, FileNotFoundError):
            open_snapshotter(store_root, r.snapshotter or None).remove(r.snapshot_key)
    c.store.remove(c)


# -- starting a created container ------------------------------------------------------------------------
class _Handle:
    """What the monitor (runtime.monitor.Launched) holds for a running container."""

    def __init__(self, proc: SandboxProcess) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._code: int | None = None

    def wait(self) -> int:
        if self._code is None:
            self._code = self.proc.wait().exit_code
        return self._code

    def oom_killed(self) -> bool:
        st = self.proc.status
        return bool(st and st.oom_killed)

    def cgroup_paths(self) -> dict[str, str]:
        return self.proc.cgroup.paths() if self.proc.cgroup is not None else {}

    def cleanup(self) -> None:
        self.proc.close()


class SandboxLauncher:
    """Starts a created container with the built-in sandbox (runtime.monitor's Launcher)."""

    def start(self, store_root: Path, c: Container, stdio: tuple[int, int, int],
              prestart: Callable[[int], None], *, console: str = "stdio",
              detach: bool = False) -> _Handle:
        return _Handle(start_container_process(store_root, c, stdio=stdio, prestart=prestart,
                                               console=console, detach=detach))


def container_launcher() -> SandboxLauncher:
    return SandboxLauncher()


def start_container_process(store_root: Path, c: Container, *, stdio: Sequence[StdioArg],
                            prestart: Callable[[int], None] | None = None,
                            console: str = "stdio", detach: bool = False) -> SandboxProcess:
    from runtime import sandbox

    spec = json.loads(c.path("bundle/config.json").read_bytes())
    r = c.record
    mounts = open_snapshotter(store_root, r.snapshotter or None).mounts(r.snapshot_key)
    return sandbox.start(spec, rootfs_mounts=mounts, stdio=stdio, cgroup_name=f"pybuild-{c.id}",
                         prestart=prestart, detach=detach, console=console)


def _network_prestart(store_root: Path, c: Container,
                      closers: list[Callable[[], None]]) -> Callable[[int], None] | None:
    if c.record.network in ("none", "host", ""):
        return None

    def prestart(pid: int) -> None:
        from runtime.network import attach_container

        att = attach_container(store_root, c, pid)
        closers.append(att.close)
        c.update_state(networks=att.settings)

    return prestart


def run_image(store: DirStore, req: RunRequest, *, stdio: Sequence[StdioArg] = (None, None, None),
              notify: Callable[[str], None] | None = None,
              created: Callable[[Container], None] | None = None,
              child: Child | None = None) -> int:
    """`pybuild run` in the foreground: returns the container's exit code (128+n for a signal);
    raises SandboxError subclasses for pybuild's own failures (exit 125/126/127).

    ``child``: a sandbox child spawned early (``sandbox.spawn_foreground``, same interactive/
    tty choice as ``req``), so its interpreter start-up overlapped the work here; consumed.
    With ``req.rm`` the writable layer is ephemeral (no fsyncs, overlay 'volatile'): it is
    mounted once, by this run, and removed when the container exits."""
    ephemeral = req.rm and not req.runtime
    try:
        c, spec, mounts = _create(store, req, notify=notify, ephemeral=ephemeral)
    except BaseException:
        if child is not None:
            child.close()
        raise
    if created is not None:
        created(c)
    root = store.root
    code: int | None = None
    oom = False
    error = ""
    closers: list[Callable[[], None]] = []
    try:
        if any(m.type == "volume" for m in c.record.mounts):
            from runtime.volumes import populate_volumes

            populate_volumes(root, c)     # docker's copy-up of image content into new volumes
        if req.runtime:
            if child is not None:
                child.close()
                child = None
            code = _run_with_runtime(root, c, req, stdio)
            return code
        from runtime import sandbox

        if not req.interactive and not req.options.tty and child is None:
            stdio = (os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), *stdio[1:])
        if ephemeral:
            from runtime.snapshots import single_use

            # this is the layer's one mount (volume copy-up, if any, happened above), and
            # the layer goes with the container: no sync of the host filesystem at unmount
            mounts = single_use(mounts)

        def on_start(proc: SandboxProcess) -> None:
            c.update_state(status="running", pid=proc.pid, pid_start=process_start_time(proc.pid),
                           started_at=rfc3339_nano(),
                           cgroup=proc.cgroup.paths() if proc.cgroup is not None else {})

        try:
            status = sandbox.run(spec, rootfs_mounts=mounts, stdio=stdio, interactive=req.interactive,
                                 cgroup_name=f"pybuild-{c.id}", on_start=on_start,
                                 prestart=_network_prestart(root, c, closers), console="pty",
                                 child=child)
            child = None
        finally:
            if stdio[0] is not None and stdio[0] > 2:
                os.close(stdio[0])
        code, oom = status.exit_code, status.oom_killed
        return code
    except SandboxError as exc:
        error = str(exc)
        code = exc.exit_code
        raise
    finally:
        if child is not None:
            child.close()           # not handed to the sandbox (a failure before the start)
        for close in closers:
            with contextlib.suppress(Exception):  # noqa: BLE001 - teardown goes on
                close()
        if closers:
            from runtime.network import detach_container

            with contextlib.suppress(Exception):  # noqa: BLE001
                detach_container(root, c)
        if req.rm:
            with contextlib.suppress(Exception):  # noqa: BLE001 - a failed --rm leaves the record
                _remove(root, c)
        else:
            c.update_state(status="exited", pid=0, exit_code=code if code is not None else 125,
                           oom_killed=oom, finished_at=rfc3339_nano(), error=error)


def _run_with_runtime(root: Path, c: Container, req: RunRequest, stdio: Sequence[StdioArg]) -> int:
    from runtime import sandbox

    if os.geteuid() != 0:
        raise UnsupportedHost(f"--runtime {req.runtime}: rootless runs need the built-in sandbox")
    spec = json.loads(c.path("bundle/config.json").read_bytes())
    # runc creates the cgroup itself: give it a path of its own next to ours
    spec.setdefault("linux", {})["cgroupsPath"] = f"/pybuild-{req.runtime}-{c.id}"
    if spec["process"].get("terminal") and not os.isatty(0):
        raise specmod.SpecError(f"--runtime {req.runtime} with -t needs a terminal on stdin")
    mounts = open_snapshotter(root, c.record.snapshotter or None).mounts(c.record.snapshot_key)
    c.update_state(status="running", started_at=rfc3339_nano())
    return sandbox.run_runtime(spec, bundle=c.path("bundle"), container_id=c.id[:32],
                               runtime=req.runtime or "runc", rootfs_mounts=mounts, stdio=stdio,
                               state_root=str(root / "runtime" / (req.runtime or "runc")))
