"""Image → snapshot chain → container rootfs (DESIGN §2.4): each layer is unpacked once, ever,
into a committed snapshot named by its ChainID (a per-ChainID lock serialises concurrent
callers), verifying blob digest and diff_id while streaming (a mismatch removes the partial
snapshot). Rootless with a subordinate id range, the unpack runs in a user namespace with the
containers' id map, so owners are kept. Imports: registry (store, model, compression), runtime.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from registry.digest import Digest
from registry.model import Descriptor, ImageConfig, Manifest, chain_ids
from runtime.errors import LayerError, SandboxError

if TYPE_CHECKING:
    from registry.store import DirStore
    from runtime.idmap import IdMapping
    from runtime.snapshots import Mount, Snapshotter
    from runtime.unpack import UnpackStats

# registry.compression, runtime.unpack and logging are imported only when a layer must be
# unpacked: `pybuild run` of an image already unpacked never needs them (start-up time).

EXTRACT_LABEL = "pybuild.extract"
USERNS_OP = "unpack-chain"       # the nsinit apply-mode op that runs unpack_in_userns
MAX_LAYER_ENV = "PYBUILD_MAX_LAYER_SIZE"
LAYER_RATIO = 200                # a layer may decompress to 200x its blob ...
LAYER_FLOOR = 1 << 30            # ... or 1 GiB, whichever is larger (gzip of zeros is ~1000x)


@dataclass(frozen=True, slots=True)
class ChainResult:
    """What ensure_chain did: the top snapshot key and which layers it had to unpack."""

    top: str | None
    chain: tuple[str, ...]
    unpacked: tuple[str, ...]
    reused: tuple[str, ...]
    seconds: float
    stats: tuple[UnpackStats, ...] = ()


@dataclass(slots=True)
class _Progress:
    """What the unpack loop did (in this process or in the user-namespace child)."""

    top: str | None = None
    unpacked: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    stats: list[UnpackStats] = field(default_factory=list)
    layers: list[tuple[str, float]] = field(default_factory=list)   # (blob digest, seconds)

    def to_doc(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"top": self.top, "unpacked": self.unpacked, "reused": self.reused,
                "stats": [asdict(s) for s in self.stats], "layers": [list(x) for x in self.layers]}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> _Progress:
        from runtime.unpack import UnpackStats

        stats = [UnpackStats(**{**s, "warnings": tuple(s.get("warnings") or ())})
                 for s in doc.get("stats") or ()]
        return cls(doc.get("top"), list(doc.get("unpacked") or ()), list(doc.get("reused") or ()),
                   stats, [(str(d), float(t)) for d, t in doc.get("layers") or ()])


def max_layer_size() -> int | None:
    """The user's cap on a layer's decompressed size from $PYBUILD_MAX_LAYER_SIZE (``20g``,
    bytes; ``0`` = no cap), or None for the default (``layer_cap``)."""
    text = os.environ.get(MAX_LAYER_ENV, "").strip()
    if not text:
        return None
    from runtime.spec import SpecError, parse_bytes

    try:
        return parse_bytes(text, what=MAX_LAYER_ENV)
    except SpecError as exc:
        raise SandboxError(str(exc), hint=f"e.g. {MAX_LAYER_ENV}=20g, or 0 for no cap") from None


def layer_cap(compressed: int, override: int | None) -> int | None:
    """How many bytes a layer of ``compressed`` bytes may decompress to: ``override`` if set
    (0: no cap), else max(1 GiB, 200x the blob). Real layers compress 2-10x; a decompression
    bomb (a small blob of zeros, ~1000x for gzip and far more for zstd) would fill the disk."""
    if override is not None:
        return override or None
    return max(LAYER_FLOOR, LAYER_RATIO * compressed)


class _Hashing:
    """Hashes everything read through it (the diff_id of the uncompressed layer) and stops a
    stream that grows past ``cap`` bytes."""

    def __init__(self, inner: IO[bytes], layer: str, cap: int | None) -> None:
        self._inner = inner
        self._layer, self._cap = layer, cap
        self.hasher = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self.hasher.update(data)
        self.size += len(data)
        if self._cap is not None and self.size > self._cap:
            raise LayerError(self._layer, "", f"decompresses to more than {self._cap} bytes; "
                             "refused as a decompression bomb", hint=f"if the image is genuine, "
                             f"raise the cap: {MAX_LAYER_ENV}=SIZE (e.g. 64g; 0 = no cap)")
        return data

    def readable(self) -> bool:
        return True


def image_config(store: DirStore, manifest: Manifest) -> ImageConfig:
    return ImageConfig.from_json(store.read(manifest.config.digest))


def unpack_layer(store: DirStore, snapshotter: Snapshotter, key: str, desc: Descriptor,
                 diff_id: Digest, *, rootless: bool | None = None,
                 max_size: int | None = None) -> UnpackStats:
    """Stream blob ``desc`` from the store into active snapshot ``key``, verifying the blob
    digest and ``diff_id`` and capping the decompressed size (``layer_cap``; ``max_size``
    is the user's override). Raises DigestMismatch/LayerError; the caller removes ``key``."""
    import io

    from registry.compression import open_sniffed
    from runtime.unpack import CHUNK, RawAdapter, ReadAhead

    with store.open(desc.digest) as raw:
        # The codec comes from the bytes, not the media type (docker sniffs too); the
        # diff_id check below still pins the content.
        _, plain = open_sniffed(io.BufferedReader(RawAdapter(raw), CHUNK))
        hashed = _Hashing(plain, str(desc.digest), layer_cap(desc.size, max_size))
        ahead = ReadAhead(hashed)
        try:
            stats = snapshotter.apply_layer(key, io.BufferedReader(ahead, CHUNK), layer=str(desc.digest),
                                            rootless=rootless)
        finally:
            ahead.close()
        raw.verify_rest()
    got = Digest.from_hasher(hashed.hasher)
    if got != diff_id:
        raise LayerError(str(desc.digest), "", f"uncompressed content has digest {got}, "
                         f"the image config says {diff_id}")
    return stats


def ensure_chain_report(store: DirStore, snapshotter: Snapshotter, manifest: Manifest, *,
                        rootless: bool | None = None, config: ImageConfig | None = None) -> ChainResult:
    """Make sure every layer of ``manifest`` is a committed snapshot named by its ChainID.

    Idempotent; layers already present are reused without reading their blobs. Holds the
    store lock shared (gc waits) and a per-ChainID lock while unpacking.

    As an unprivileged user with a subordinate id range (the overlay snapshotter), the layers
    are unpacked by a sandbox child inside a user namespace with ``idmap.rootless_mapping()``
    (the map containers and build steps use): a layer's 33:33 is then 33:33 in every
    container, setuid/setgid bits and user xattrs are kept, and the blob is still verified
    while it streams. With a single-id map, owners other than root cannot exist: they are
    dropped (files show as root), with one warning per layer.
    """
    started = time.perf_counter()
    config = config or image_config(store, manifest)
    if len(config.diff_ids) != len(manifest.layers):
        raise LayerError(str(manifest.config.digest), "",
                         f"image has {len(manifest.layers)} layers but {len(config.diff_ids)} diff_ids")
    chain = [str(c) for c in chain_ids(config.diff_ids)]
    with store.lock(shared=True):
        if chain and snapshotter.exists(chain[-1]):
            # the common case (every run after the first): the top ChainID names the whole
            # stack, and a committed snapshot cannot lose its ancestors (remove refuses a
            # parent), so one lookup replaces one metadata read per layer
            return ChainResult(chain[-1], tuple(chain), (), tuple(chain), time.perf_counter() - started)
        mapping, dropped = _rootless_plan(snapshotter, rootless)
        cap = max_layer_size()
        if mapping is not None:
            done = _unpack_in_userns(store, snapshotter, manifest.layers, config.diff_ids, mapping, cap)
        else:
            done = _unpack_chain(store, snapshotter, manifest.layers, config.diff_ids,
                                 rootless=rootless, dropped_why=dropped, max_size=cap)
    return ChainResult(done.top, tuple(chain), tuple(done.unpacked), tuple(done.reused),
                       time.perf_counter() - started, tuple(done.stats))


def _unpack_chain(store: DirStore, snapshotter: Snapshotter, layers: Sequence[Descriptor],
                  diff_ids: Sequence[Digest], *, rootless: bool | None,
                  dropped_why: str, max_size: int | None) -> _Progress:
    """Unpack every layer whose ChainID snapshot is missing (the caller holds the store lock).
    ``dropped_why``: why an owner may not be kept here (for the once-per-layer warning)."""
    done = _Progress()
    parent: str | None = None
    for desc, diff_id, chain_id in zip(layers, diff_ids, chain_ids(list(diff_ids)), strict=True):
        key = str(chain_id)
        if snapshotter.exists(key):
            done.reused.append(key)
            parent = key
            continue
        with snapshotter.key_lock(key):
            if snapshotter.exists(key):          # another caller finished it meanwhile
                done.reused.append(key)
                parent = key
                continue
            _remove_stale_extracts(snapshotter, key)
            tmp = f"extract-{os.urandom(6).hex()}-{key[7:19]}"
            snapshotter.prepare(tmp, parent, labels={EXTRACT_LABEL: key})
            try:
                t0 = time.perf_counter()
                st = unpack_layer(store, snapshotter, tmp, desc, diff_id, rootless=rootless,
                                  max_size=max_size)
                snapshotter.commit(key, tmp)
            except BaseException:
                with contextlib.suppress(Exception):
                    snapshotter.remove(tmp)
                raise
            seconds = time.perf_counter() - t0
            if st.owners_dropped:
                st = _owner_warning(st, str(desc.digest), dropped_why)
            _log().info("unpacked layer %s (%d entries, %d bytes) in %.2fs", desc.digest, st.entries,
                        st.bytes, seconds)
            done.stats.append(st)
            done.unpacked.append(key)
            done.layers.append((str(desc.digest), seconds))
            parent = key
    done.top = parent
    return done


def _log() -> Any:
    import logging

    return logging.getLogger("pybuild." + __name__)


def _owner_warning(st: UnpackStats, layer: str, why: str) -> UnpackStats:
    """Say once per layer that owners were dropped (podman's ignore_chown_errors warning)."""
    from dataclasses import replace

    text = (f"{st.owners_dropped} file owner(s) could not be kept, the files belong to the "
            f"container's root instead: {why or 'chown was refused'}")
    _log().warning("layer %s: %s", layer, text)
    return replace(st, warnings=(*st.warnings, text))


def _rootless_plan(snapshotter: Snapshotter, rootless: bool | None) -> tuple[IdMapping | None, str]:
    """(the user-namespace map to unpack with, or None to unpack in this process; why owners
    may be dropped then). None as root (nothing changes), with a single-id map (only root
    exists in the namespace: podman's ignore_chown_errors) and for the copy snapshotter (it
    copies parents on the host side, where files of other ids would be unreadable)."""
    if os.geteuid() == 0 or rootless is False:
        return None, ""
    if getattr(snapshotter, "driver", "") != "overlay":
        return None, "the copy snapshotter unpacks layers as this user, outside a user namespace"
    from runtime import idmap

    mapping = idmap.rootless_mapping()
    if mapping.single:
        return None, idmap.single_map_reason()
    return mapping, ""


# -- rootless: the unpack inside the user namespace -----------------------------------------------
def _unpack_in_userns(store: DirStore, snapshotter: Snapshotter, layers: Sequence[Descriptor],
                      diff_ids: Sequence[Digest], mapping: IdMapping, max_size: int | None) -> _Progress:
    """Run the unpack loop in a sandbox child (runtime.sandbox.apply, nsinit apply mode) as
    root of a user namespace mapped with ``mapping``: there chown to any mapped id works and
    the host files get the subordinate ids every container of this user sees. The child
    opens the blobs from the store itself (no copy); errors come back with their own type."""
    from runtime import sandbox

    top = mapping.uids[-1]
    action = {"op": USERNS_OP, "store": os.fspath(store.root), "snapshots": os.fspath(snapshotter.root),
              "xattr_ns": getattr(snapshotter, "xattr_ns", "user"),
              "layers": [d.to_dict() for d in layers], "diff_ids": [str(d) for d in diff_ids],
              "id_limit": top.container_id + top.size, "max_layer_size": max_size}
    out = sandbox.apply(action, root=os.fspath(snapshotter.root), idmap=mapping)
    if not isinstance(out, dict):
        raise SandboxError(f"unpacking layers: unexpected reply from the child: {out!r}"[:300])
    if "error" in out:
        raise _rebuild_error(out["error"])
    done = _Progress.from_doc(out)
    log = _log()
    for (digest, seconds), st in zip(done.layers, done.stats, strict=True):
        for text in st.warnings:     # the child's log is silent: its warnings are said here
            log.warning("layer %s: %s", digest, text)
        log.info("unpacked layer %s (%d entries, %d bytes) in %.2fs (user namespace)", digest,
                 st.entries, st.bytes, seconds)
    return done


def unpack_in_userns(action: Mapping[str, Any]) -> dict[str, Any]:
    """The child side of the rootless unpack (called by runtime.nsinit in apply mode, as root
    of the user namespace; the parent holds the store lock). Returns _Progress as JSON, or
    {"error": ...}: the parent re-raises pybuild's errors with their own type."""
    import logging

    from registry.errors import RegistryError

    quiet = logging.getLogger("pybuild")
    quiet.addHandler(logging.NullHandler())   # the parent logs the warnings from the stats
    quiet.propagate = False

    from registry.store import DirStore
    from runtime.snapshots import OverlaySnapshotter

    try:
        store = DirStore(str(action["store"]), create=False)
        sn = OverlaySnapshotter(str(action["snapshots"]), xattr_ns=action.get("xattr_ns") or "user")
        layers = [Descriptor.from_dict(d) for d in action["layers"]]
        diff_ids = [Digest.parse(str(d)) for d in action["diff_ids"]]
        limit = int(action.get("id_limit") or 0)
        why = (f"their ids are outside this user's id map (0-{limit - 1}, /etc/subuid)" if limit
               else "their ids are outside this user's id map (/etc/subuid)")
        cap = action.get("max_layer_size")
        done = _unpack_chain(store, sn, layers, diff_ids, rootless=True, dropped_why=why,
                             max_size=None if cap is None else int(cap))
    except Exception as exc:  # noqa: BLE001 - every error travels back to the parent
        return {"error": {"module": type(exc).__module__, "name": type(exc).__qualname__,
                          "message": str(exc) if isinstance(exc, RegistryError | SandboxError)
                          else f"{type(exc).__name__}: {exc}",
                          "fields": {k: v for k, v in vars(exc).items()
                                     if v is None or isinstance(v, str | int | float)}}}
    return done.to_doc()


def _rebuild_error(doc: Mapping[str, Any]) -> Exception:
    """The child's RegistryError/SandboxError as the same class (its __init__ not re-run:
    message and fields are restored as they were), else a SandboxError with the message."""
    import importlib

    from registry.errors import RegistryError

    module, name, message = str(doc.get("module")), str(doc.get("name")), str(doc.get("message"))
    cls: Any = None
    if module.startswith(("registry.", "runtime.")) and "." not in name:
        with contextlib.suppress(ImportError):
            cls = getattr(importlib.import_module(module), name, None)
    if isinstance(cls, type) and issubclass(cls, RegistryError | SandboxError):
        exc = cls.__new__(cls)
        Exception.__init__(exc, message)
        fields = doc.get("fields")
        if isinstance(fields, Mapping):
            for k, v in fields.items():
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(exc, str(k), v)
        return exc
    return SandboxError(f"unpacking layers in the user namespace: {message}")


def _remove_stale_extracts(snapshotter: Snapshotter, key: str) -> None:
    """An earlier unpack of ``key`` that was killed left its active snapshot; we hold the key
    lock, so nobody else is extracting it now."""
    for info in list(snapshotter.walk()):
        if info.kind == "active" and info.labels.get(EXTRACT_LABEL) == key:
            with contextlib.suppress(Exception):
                snapshotter.remove(info.key)


def ensure_chain(store: DirStore, snapshotter: Snapshotter, manifest: Manifest, *,
                 rootless: bool | None = None, config: ImageConfig | None = None) -> str | None:
    """The top ChainID key of the image's committed snapshot chain (None for no layers)."""
    return ensure_chain_report(store, snapshotter, manifest, rootless=rootless, config=config).top


def prepare_rootfs(store: DirStore, snapshotter: Snapshotter, manifest: Manifest, key: str, *,
                   rootless: bool | None = None, ephemeral: bool = False,
                   config: ImageConfig | None = None) -> list[Mount]:
    """An active snapshot ``key`` on top of the image: the mounts of a container's rootfs.
    ``ephemeral``: see Snapshotter.prepare (the layer of a foreground ``run --rm``);
    ``config``: the image config when the caller has it already (else read from the store)."""
    top = ensure_chain(store, snapshotter, manifest, rootless=rootless, config=config)
    if ephemeral:
        return snapshotter.prepare(key, top, ephemeral=True)
    return snapshotter.prepare(key, top)


def load_manifest(store: DirStore, desc: Descriptor) -> Manifest:
    return Manifest.from_json(store.read(desc.digest), media_type=desc.media_type)


def in_private_root(mounts: Sequence[Mount], work: Callable[[int], Any], *,
                    binds: Sequence[tuple[str, str, bool]] = ()) -> Any:
    """Run ``work(root_fd)`` on a container's filesystem without mounting anything on the host:
    a forked child mounts ``mounts`` (the rootfs: its writable layer over the image) and
    ``binds`` ((host source, container path, read-only); one that cannot be placed is left
    out) in its own private mount namespace, calls ``work`` with an fd of the root, and exits,
    taking the mounts with it. Returns ``work``'s result (JSON-able); a failure in the child
    comes back as SandboxError with the child's message and hint. Root only."""
    import json
    import tempfile
    from pathlib import Path

    from runtime import _syscalls as sc
    from runtime import pathsafe
    from runtime.nsinit import mount_rootfs

    dicts = [{"type": m.type, "source": m.source, "options": list(m.options)} for m in mounts]
    target = Path(tempfile.mkdtemp(prefix="pybuild-root-"))
    rd, wr = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(rd)
                sc.unshare(sc.CLONE_NEWNS)
                sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
                mount_rootfs(dicts, str(target))
                root_fd = pathsafe.open_root(target)
                for src, dest, ro in binds:
                    with contextlib.suppress(OSError, SandboxError):
                        fd = pathsafe.open_dir(root_fd, pathsafe.clean_name(dest))
                        where = f"/proc/self/fd/{fd}"
                        sc.mount(src, where, None, sc.MS_BIND | sc.MS_REC)
                        if ro:
                            sc.mount(None, where, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
                        os.close(fd)
                os.close(root_fd)
                result = work(pathsafe.open_root(target))   # opened after the binds: sees them
                os.write(wr, json.dumps({"result": result}).encode())
                code = 0
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                with contextlib.suppress(OSError):
                    os.write(wr, json.dumps({"error": str(exc) or type(exc).__name__,
                                             "hint": getattr(exc, "hint", None)}).encode())
            finally:
                os._exit(code)
        os.close(wr)
        wr = -1
        data = b""
        while chunk := os.read(rd, 65536):
            data += chunk
        _, status = os.waitpid(pid, 0)
        doc = json.loads(data) if data else {}
        if status != 0 or "result" not in doc:
            raise SandboxError(str(doc.get("error") or "the helper process failed"), hint=doc.get("hint"))
        return doc["result"]
    finally:
        os.close(rd)
        if wr >= 0:
            os.close(wr)
        with contextlib.suppress(OSError):
            target.rmdir()
