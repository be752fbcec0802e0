"""Hostile layers (DESIGN C12, issue 2 Must-show): each is refused with an error naming the
entry, or contained inside the target; a sentinel tree next to the target and the host paths
an escape would hit are unchanged. The layers live in testdata/layers/<case>.tar (tiny,
crafted; regenerate with PYBUILD_UPDATE_GOLDEN=1) and run through both the apply-mode and the
overlay-lower unpacker, and as root and inside a user namespace."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.errors import LayerError
from runtime.unpack import UnpackStats, apply_layer, unpack_overlay_layer
from tests.conftest import TESTDATA
from tests.runtime.fsutil import ChildError, E, make_tar, run_in_child, tree

PROBE = "pybuild-hostile-probe"
LAYERS = TESTDATA / "layers"


@dataclass(frozen=True)
class Case:
    entries: list[E]
    refused: str | None = None                 # substring of the error, or None: contained
    check: Callable[[Path, UnpackStats], None] | None = None


def _exists(rel: str) -> Callable[[Path, UnpackStats], None]:
    def check(target: Path, stats: UnpackStats) -> None:
        assert (target / rel).exists() or (target / rel).is_symlink(), f"{rel} not inside the target"
    return check


def _regular(rel: str, data: bytes) -> Callable[[Path, UnpackStats], None]:
    def check(target: Path, stats: UnpackStats) -> None:
        p = target / rel
        assert p.is_file() and not p.is_symlink() and p.read_bytes() == data
    return check


def _real_dir(rel: str) -> Callable[[Path, UnpackStats], None]:
    def check(target: Path, stats: UnpackStats) -> None:
        assert (target / rel).is_dir() and not (target / rel).is_symlink()
    return check


def _both(*checks: Callable[[Path, UnpackStats], None]) -> Callable[[Path, UnpackStats], None]:
    def check(target: Path, stats: UnpackStats) -> None:
        for c in checks:
            c(target, stats)
    return check


CHAIN = [E(f"l{i}", "symlink", link=f"l{i + 1}") for i in range(45)] + [E("l45", "dir"), E("l0/x")]

CASES: dict[str, Case] = {
    "dotdot": Case([E("../escape", data=b"x")], refused="'..'"),
    "dotdot_nested": Case([E("a", "dir"), E("a/../../escape", data=b"x")], refused="'..'"),
    "absolute_name": Case([E(f"/{PROBE}", data=b"x")], check=_regular(PROBE, b"x")),
    "symlink_then_write": Case([E("lnk", "symlink", link="../sentinel"), E("lnk/pwned", data=b"x")],
                               check=_regular("sentinel/pwned", b"x")),
    "abs_symlink_then_write": Case([E("lnk", "symlink", link="/"), E(f"lnk/tmp/{PROBE}", data=b"x")],
                                   check=_regular(f"tmp/{PROBE}", b"x")),
    "symlink_dir_then_mkdir": Case([E("lnk", "symlink", link="../../.."), E("lnk/newdir", "dir"),
                                    E("lnk/newdir/f", data=b"x")], check=_regular("newdir/f", b"x")),
    "hardlink_dotdot": Case([E("h", "hardlink", link="../sentinel/secret")], refused="'..'"),
    "hardlink_absolute": Case([E("h", "hardlink", link="/etc/passwd")], refused="not found"),
    "hardlink_through_symlink": Case([E("lnk", "symlink", link="../sentinel"),
                                      E("h", "hardlink", link="lnk/secret")], refused="not found"),
    "hardlink_to_dir": Case([E("d", "dir"), E("h", "hardlink", link="d")], refused="directory"),
    "hardlink_then_overwrite": Case([E("f", data=b"orig"), E("h", "hardlink", link="f"),
                                     E("h", data=b"new")],
                                    check=_both(_regular("f", b"orig"), _regular("h", b"new"))),
    "whiteout_dotdot": Case([E("../.wh.secret")], refused="'..'"),
    "whiteout_through_symlink": Case([E("lnk", "symlink", link="../sentinel"), E("lnk/.wh.secret")],
                                     refused="symlink"),
    "opaque_through_symlink": Case([E("lnk", "symlink", link="../sentinel"), E("lnk/.wh..wh..opq")],
                                   refused="symlink"),
    "whiteout_through_abs_symlink": Case([E("lnk", "symlink", link="/"), E("lnk/tmp/.wh.x")],
                                         refused="symlink"),
    "symlink_loop": Case([E("a", "symlink", link="b"), E("b", "symlink", link="a"), E("a/x")],
                         refused="loop"),
    "symlink_self_loop": Case([E("s", "symlink", link="s"), E("s/x")], refused="loop"),
    "symlink_chain_too_long": Case(CHAIN, refused="loop"),
    "invalid_whiteout_meta": Case([E(".wh..wh.foo")], refused="invalid whiteout"),
    "invalid_whiteout_empty": Case([E(".wh.")], refused="invalid whiteout"),
    "invalid_whiteout_dotdot": Case([E(".wh..")], refused="invalid whiteout"),
    "whiteout_used_as_dir": Case([E(".wh.x/y")], refused="invalid whiteout"),
    "file_over_symlink": Case([E("f", "symlink", link="../sentinel/secret"), E("f", data=b"new")],
                              check=_regular("f", b"new")),
    "dir_over_symlink": Case([E("d", "symlink", link="../sentinel"), E("d", "dir"), E("d/x", data=b"x")],
                             check=_both(_real_dir("d"), _regular("d/x", b"x"))),
    "symlink_targets_verbatim": Case([E("s1", "symlink", link="/etc/shadow"),
                                      E("s2", "symlink", link="../../../../etc")],
                                     check=_both(_exists("s1"), _exists("s2"))),
    "root_as_file": Case([E("./", data=b"x")], refused="root"),
    "path_too_deep": Case([E("a/" * 600 + "x", data=b"x")], refused="deeper"),
    "device_node": Case([E("dev", "dir"), E("dev/mem", "char", dev=(1, 1), mode=0o600)],
                        check=lambda t, s: None),
}


def _layer_bytes(name: str) -> bytes:
    data = make_tar(CASES[name].entries)
    path = LAYERS / f"{name}.tar"
    if os.environ.get("PYBUILD_UPDATE_GOLDEN"):
        LAYERS.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return path.read_bytes()


def _sentinel(base: Path) -> None:
    s = base / "sentinel"
    (s / "sub").mkdir(parents=True)
    (s / "secret").write_text("do not touch")
    (s / "sub" / "file").write_text("nested")
    os.symlink("secret", s / "link")


def _outside(base: Path) -> tuple[object, ...]:
    host_probes = [Path("/") / PROBE, Path("/tmp") / PROBE, Path("/etc") / PROBE, Path("/newdir")]
    return (tree(base / "sentinel"), sorted(os.listdir(base)),
            [p.exists() or p.is_symlink() for p in host_probes])


def _unpack(mode: str, data: bytes, target: Path, rootless: bool | None) -> UnpackStats:
    fn = apply_layer if mode == "apply" else unpack_overlay_layer
    return fn(io.BytesIO(data), target, rootless=rootless, layer="hostile")


def test_testdata_layers_match_the_table() -> None:
    for name, case in CASES.items():
        assert (LAYERS / f"{name}.tar").read_bytes() == make_tar(case.entries), \
            f"testdata/layers/{name}.tar is stale: run with PYBUILD_UPDATE_GOLDEN=1"


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both resolvers: the kernel's openat2(RESOLVE_IN_ROOT) and the portable component walk."""
    from runtime import pathsafe

    if request.param == "walk":
        monkeypatch.setattr(pathsafe, "have_openat2", lambda: False)
    elif not pathsafe.have_openat2():
        pytest.skip("openat2 not available on this kernel")
    return str(request.param)


@pytest.mark.needs_root
@pytest.mark.parametrize("mode", ["apply", "overlay"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_layer(name: str, mode: str, resolver: str, tmp_path: Path) -> None:
    case = CASES[name]
    data = _layer_bytes(name)
    work = tmp_path / "a"
    target = work / "target"
    target.mkdir(parents=True)
    _sentinel(work)
    before = _outside(work)
    if case.refused is not None:
        with pytest.raises(LayerError) as err:
            _unpack(mode, data, target, rootless=False)
        assert case.refused in str(err.value)
        assert err.value.entry, "the error must name the entry"
        assert "hostile" in str(err.value)
    else:
        stats = _unpack(mode, data, target, rootless=False)
        assert case.check is not None
        case.check(target, stats)
    assert _outside(work) == before


def _child_unpack(mode: str, data_path: str, target: str) -> dict[str, object]:
    try:
        stats = _unpack(mode, Path(data_path).read_bytes(), Path(target), rootless=None)
    except LayerError as exc:
        return {"refused": str(exc), "entry": exc.entry}
    return {"warnings": list(stats.warnings), "devices": stats.devices,
            "owners_dropped": stats.owners_dropped}


@pytest.mark.needs_userns
@pytest.mark.parametrize("mode", ["apply", "overlay"])
@pytest.mark.parametrize("name", ["device_node", "symlink_then_write", "whiteout_through_symlink",
                                  "hardlink_dotdot", "symlink_loop", "abs_symlink_then_write"])
def test_hostile_layer_in_user_namespace(name: str, mode: str, tmp_path: Path) -> None:
    """Rootless: the unpack runs in a child that unshared a user namespace (single-id map)."""
    case = CASES[name]
    work = tmp_path / "a"
    target = work / "target"
    target.mkdir(parents=True)
    _sentinel(work)
    before = _outside(work)
    out = run_in_child("tests.runtime.test_hostile_layers", "_child_unpack", mode,
                       str(LAYERS / f"{name}.tar"), str(target), userns=True)
    if case.refused is not None:
        assert case.refused in str(out["refused"]) and out["entry"]
    else:
        assert "refused" not in out
        case.check(target, UnpackStats())  # type: ignore[misc]
    if name == "device_node":
        assert out["devices"] == 0
        assert any("device node skipped" in w for w in out["warnings"])  # type: ignore[union-attr]
        assert not (target / "dev" / "mem").exists()
    assert _outside(work) == before


@pytest.mark.needs_root
def test_device_node_as_root_is_created(tmp_path: Path) -> None:
    stats = apply_layer(io.BytesIO(_layer_bytes("device_node")), tmp_path, rootless=False)
    st = os.lstat(tmp_path / "dev" / "mem")
    assert stats.devices == 1 and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 1


def test_oversized_extended_header_is_refused(tmp_path: Path) -> None:
    # a pax header claiming 64 MiB: refused before it is read into memory
    import tarfile

    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 64 << 20
    data = info.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 1024
    with pytest.raises(LayerError, match="bad tar header"):
        apply_layer(io.BytesIO(data), tmp_path, rootless=True)


def test_overlay_xattrs_in_a_layer_are_ignored(tmp_path: Path) -> None:
    data = make_tar([E("d", "dir", xattrs={"user.overlay.opaque": b"y", "user.keep": b"1"})])
    stats = apply_layer(io.BytesIO(data), tmp_path, rootless=True)
    assert os.getxattr(tmp_path / "d", "user.keep") == b"1"
    with pytest.raises(OSError):
        os.getxattr(tmp_path / "d", "user.overlay.opaque")
    assert any("overlay xattr" in w for w in stats.warnings)


def test_child_error_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ChildError):
        run_in_child("tests.runtime.test_hostile_layers", "_no_such_function")
