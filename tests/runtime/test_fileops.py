"""COPY / ADD / WORKDIR file actions: docker's rules, and every destination resolved inside
the root (image symlinks resolved relative to the root)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from runtime import fileops
from runtime.errors import LayerError, UnsafePath
from runtime.fileops import FileActionError, copy_action, execute, extract_action, mkdir_action
from runtime.users import UnknownUser
from tests.runtime.fsutil import E, make_tar, run_in_child

# Ownership is part of what these rules promise (0:0 by default, --chown), so they run as root;
# the rootless shape is the user-namespace test at the end.
pytestmark = pytest.mark.needs_root


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    c = tmp_path / "ctx"
    (c / "src" / "lib").mkdir(parents=True)
    (c / "src" / "main.sh").write_text("#!/bin/sh\n")
    (c / "src" / "main.sh").chmod(0o755)
    (c / "src" / "lib" / "util.sh").write_text("util\n")
    os.symlink("main.sh", c / "src" / "run")
    os.symlink("../../outside-secret", c / "src" / "escape")
    (c / "README").write_text("readme\n")
    os.utime(c / "README", (1500000000, 1500000000))
    os.symlink("README", c / "readme-link")
    (c / "src" / "lib" / "h1").write_text("hard")
    os.link(c / "src" / "lib" / "h1", c / "src" / "lib" / "h2")
    (tmp_path / "outside-secret").write_text("secret")
    return c


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "rootfs"
    (r / "usr").mkdir(parents=True)
    (r / "opt" / "local").mkdir(parents=True)
    os.symlink("../opt/local", r / "usr" / "local")          # relative image symlink
    os.symlink("/opt", r / "abs-opt")                         # absolute image symlink
    os.symlink("/etc", r / "etc-link")                        # would be the host's /etc if followed
    (r / "etc").mkdir()
    return r


def run(action: dict[str, object], root: Path) -> dict[str, object]:
    json.dumps(action)          # actions must be JSON-serializable
    return execute(action, root)


def test_file_into_dir_with_trailing_slash(ctx: Path, root: Path) -> None:
    run(copy_action(["README"], "/app/", source_root=str(ctx)), root)
    f = root / "app" / "README"
    assert f.read_text() == "readme\n"
    st = f.stat()
    assert st.st_mtime == 1500000000
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert (root / "app").stat().st_mode & 0o7777 == 0o755


def test_file_to_new_name_without_slash(ctx: Path, root: Path) -> None:
    run(copy_action(["README"], "/docs/readme.txt", source_root=str(ctx)), root)
    assert (root / "docs" / "readme.txt").read_text() == "readme\n"
    assert (root / "docs").stat().st_mode & 0o777 == 0o755


def test_file_into_existing_dir_without_slash(ctx: Path, root: Path) -> None:
    (root / "existing").mkdir()
    run(copy_action(["README"], "/existing", source_root=str(ctx)), root)
    assert (root / "existing" / "README").is_file()


def test_relative_dest_is_under_workdir(ctx: Path, root: Path) -> None:
    run(copy_action(["README"], "sub/", source_root=str(ctx), workdir="/work"), root)
    assert (root / "work" / "sub" / "README").is_file()


def test_directory_source_copies_its_contents(ctx: Path, root: Path) -> None:
    run(copy_action(["src"], "/app", source_root=str(ctx)), root)
    app = root / "app"
    assert sorted(os.listdir(app)) == ["escape", "lib", "main.sh", "run"]
    assert (app / "main.sh").stat().st_mode & 0o777 == 0o755
    assert os.readlink(app / "run") == "main.sh"                 # symlinks stay symlinks
    assert os.readlink(app / "escape") == "../../outside-secret"  # target verbatim, not followed
    assert os.stat(app / "lib" / "h1").st_ino == os.stat(app / "lib" / "h2").st_ino


def test_multiple_sources_need_a_directory_dest(ctx: Path, root: Path) -> None:
    with pytest.raises(FileActionError, match="end with '/'"):
        run(copy_action(["README", "src/main.sh"], "/app", source_root=str(ctx)), root)
    run(copy_action(["README", "src/main.sh"], "/app/", source_root=str(ctx)), root)
    assert sorted(os.listdir(root / "app")) == ["README", "main.sh"]


def test_top_level_source_symlink_is_followed_inside_the_context(ctx: Path, root: Path) -> None:
    run(copy_action(["readme-link"], "/x/", source_root=str(ctx)), root)
    f = root / "x" / "readme-link"
    assert f.is_file() and not f.is_symlink() and f.read_text() == "readme\n"
    # a source symlink that points out of the context is resolved inside it: not found
    with pytest.raises(FileActionError, match="not found"):
        run(copy_action(["src/escape"], "/y/", source_root=str(ctx)), root)
    with pytest.raises(UnsafePath):
        run(copy_action(["../outside-secret"], "/y/", source_root=str(ctx)), root)


def test_chown_and_chmod(ctx: Path, root: Path) -> None:
    run(copy_action(["src"], "/srv/app/", source_root=str(ctx), owner=(1000, 1001), mode=0o640), root)
    for p in [root / "srv", root / "srv" / "app", root / "srv" / "app" / "lib" / "util.sh"]:
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (1000, 1001), p
    assert (root / "srv" / "app" / "main.sh").stat().st_mode & 0o7777 == 0o640
    assert (root / "srv" / "app" / "run").lstat().st_uid == 1000


def test_dest_through_image_symlinks_stays_in_root(ctx: Path, root: Path) -> None:
    run(copy_action(["src/main.sh"], "/usr/local/bin/", source_root=str(ctx)), root)
    assert (root / "opt" / "local" / "bin" / "main.sh").is_file()
    run(copy_action(["README"], "/abs-opt/docs/", source_root=str(ctx)), root)
    assert (root / "opt" / "docs" / "README").is_file()
    run(copy_action(["README"], "/etc-link/", source_root=str(ctx)), root)
    assert (root / "etc" / "README").is_file()
    assert not Path("/etc/README").exists()


def test_existing_file_is_replaced_not_written_through(ctx: Path, root: Path) -> None:
    (root / "a").write_text("original")
    os.link(root / "a", root / "b")
    os.symlink("/etc/hostname-not-this", root / "c")
    run(copy_action(["README"], "/a", source_root=str(ctx)), root)
    run(copy_action(["README"], "/c", source_root=str(ctx)), root)
    assert (root / "a").read_text() == "readme\n"
    assert (root / "b").read_text() == "original"
    assert (root / "c").is_file() and not (root / "c").is_symlink()


def test_directory_and_file_do_not_overwrite_each_other(ctx: Path, root: Path) -> None:
    (root / "app" / "lib").mkdir(parents=True)
    (root / "app" / "main.sh").mkdir()
    with pytest.raises(FileActionError, match="overwrite directory"):
        run(copy_action(["src"], "/app/", source_root=str(ctx)), root)


def test_skip_list(ctx: Path, root: Path) -> None:
    run(copy_action(["."], "/app/", source_root=str(ctx), skip=["src/lib", "README"]), root)
    assert sorted(os.listdir(root / "app")) == ["readme-link", "src"]
    assert not (root / "app" / "src" / "lib").exists()


def test_mkdir_workdir(root: Path) -> None:
    (root / "srv").mkdir()
    run(mkdir_action("/srv/a/b", owner=(5, 6)), root)
    assert (root / "srv" / "a" / "b").is_dir()
    assert (root / "srv" / "a").stat().st_uid == 5
    assert (root / "srv").stat().st_uid == 0           # existing: untouched
    run(mkdir_action("rel", workdir="/usr/local"), root)
    assert (root / "opt" / "local" / "rel").is_dir()
    (root / "file").write_text("x")
    with pytest.raises(FileActionError, match="not a directory"):
        run(mkdir_action("/file/sub"), root)


@pytest.mark.parametrize("codec", ["none", "gzip", "bzip2", "xz"])
def test_extract_archives(codec: str, tmp_path: Path, root: Path) -> None:
    data = make_tar([E("pkg", "dir"), E("pkg/bin", "dir"), E("pkg/bin/tool", data=b"t", mode=0o755,
                                                            uid=7, gid=8),
                     E("pkg/.wh.keep", data=b"a whiteout name is just a name in ADD"),
                     E("pkg/lib", "symlink", link="/usr/lib")])
    path = tmp_path / f"a.{codec}"
    if codec == "none":
        path.write_bytes(data)
    else:
        import bz2
        import gzip
        import lzma

        comp = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}[codec]
        path.write_bytes(comp(data))
    assert fileops.archive_codec(path) == codec
    run(extract_action(str(path), "/opt/"), root)
    tool = root / "opt" / "pkg" / "bin" / "tool"
    assert tool.read_bytes() == b"t" and (tool.stat().st_uid, tool.stat().st_gid) == (7, 8)
    assert (root / "opt" / "pkg" / ".wh.keep").is_file()
    assert os.readlink(root / "opt" / "pkg" / "lib") == "/usr/lib"
    run(extract_action(str(path), "/other", owner=(1, 2)), root)
    st = (root / "other" / "pkg" / "bin" / "tool").stat()
    assert (st.st_uid, st.st_gid) == (1, 2)


def test_extract_is_contained(tmp_path: Path, root: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(make_tar([E("../../escape", data=b"x")]))
    with pytest.raises(LayerError, match="'..'"):
        run(extract_action(str(bad), "/opt/"), root)
    sneaky = tmp_path / "sneaky.tar"
    sneaky.write_bytes(make_tar([E("l", "symlink", link="/"), E("l/etc/pwned", data=b"x")]))
    run(extract_action(str(sneaky), "/dest/"), root)
    assert (root / "dest" / "etc" / "pwned").is_file()     # contained in the destination
    assert not (root / "etc" / "pwned").exists()


def test_archive_codec_of_a_non_archive(tmp_path: Path) -> None:
    f = tmp_path / "plain.txt"
    f.write_text("not an archive at all" * 40)
    assert fileops.archive_codec(f) is None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("x")
        tf.addfile(info, io.BytesIO(b""))
    (tmp_path / "x.tgz").write_bytes(buf.getvalue())
    assert fileops.archive_codec(tmp_path / "x.tgz") == "gzip"


def test_unknown_op(root: Path) -> None:
    with pytest.raises(FileActionError):
        run({"op": "frobnicate"}, root)


def _child_copy(action: dict[str, object], root: str) -> dict[str, object]:
    return execute(action, root)


@pytest.mark.needs_userns
def test_copy_in_a_user_namespace(ctx: Path, root: Path) -> None:
    """Rootless: the action runs where uid 0 is the mapped user; --chown to an unmapped id
    is reported, not fatal."""
    out = run_in_child("tests.runtime.test_fileops", "_child_copy",
                       copy_action(["src"], "/app/", source_root=str(ctx)), str(root), userns=True)
    assert (root / "app" / "main.sh").is_file()
    assert out["warnings"] == []
    out = run_in_child("tests.runtime.test_fileops", "_child_copy",
                       copy_action(["README"], "/other/", source_root=str(ctx), owner=(1000, 1000)),
                       str(root), userns=True)
    assert (root / "other" / "README").is_file()
    assert any("not applied" in w for w in out["warnings"])  # type: ignore[union-attr]


def test_export_copies_out_of_the_root(root: Path, tmp_path: Path) -> None:
    """RUN --mount from=STAGE: a rootfs path copied to a host directory, symlinks resolved in
    the root for the source and copied verbatim inside it."""
    (root / "opt" / "app" / "sub").mkdir(parents=True)
    (root / "opt" / "app" / "f").write_text("f")
    os.chown(root / "opt" / "app" / "f", 7, 8)
    os.symlink("/etc/shadow", root / "opt" / "app" / "sub" / "l")
    out = tmp_path / "out"
    out.mkdir()
    run(fileops.export_action("/abs-opt/app", str(out)), root)     # /abs-opt -> /opt in the root
    assert (out / "f").read_text() == "f" and (out / "f").stat().st_uid == 7
    assert os.readlink(out / "sub" / "l") == "/etc/shadow"
    single = tmp_path / "single"
    single.mkdir()
    run(fileops.export_action("/opt/app/f", str(single)), root)
    assert (single / "f").read_text() == "f"
    with pytest.raises(FileActionError, match="not found"):
        run(fileops.export_action("/etc-link/shadow", str(single)), root)   # the root's /etc


# -- --chmod: octal or chmod(1) symbolic, per file ------------------------------------------------
@pytest.mark.parametrize(("before", "spec", "after"), [
    (0o777, "=", 0o000), (0o421, "+t", 0o1421), (0o1421, "-t", 0o421), (0o001, "u+X", 0o101),
    (0o000, "u+X", 0o000), (0o000, "u+s", 0o4000), (0o000, "o+s", 0o000), (0o777, "-X", 0o777),
    (0o777, "u=rw", 0o677), (0o742, "u=g", 0o442), (0o762, "u=g-w", 0o462), (0o021, "u+go", 0o321),
    (0o777, "a=r,ug=rw,u+x", 0o764), (0o2100, "o+r,g+w,a+t,g-s,u+og", 0o1724), (0o777, "go-w", 0o755),
    (0o370, "go=u-w", 0o311), (0o766, "=rw,+X", 0o777), (0o600, "u=rwX,go=rX", 0o644),
    (0o700, "u=rwX,go=rX", 0o755), (0o123, "0644", 0o644), (0o123, "7", 0o007),
])
def test_parse_mode_like_chmod(before: int, spec: str, after: int) -> None:
    change = fileops.parse_mode(spec)
    assert change is not None and change.apply(before) == after


def test_parse_mode_directories_and_errors() -> None:
    change = fileops.parse_mode("a+X")
    assert change is not None
    assert change.apply(0o600, is_dir=True) == 0o711 and change.apply(0o600) == 0o600
    for bad in ("", ",", "u", "go", "q+r", "u+x,", "017777", "0o755", "8", "u+q"):
        with pytest.raises(FileActionError, match="invalid mode"):
            fileops.parse_mode(bad)


def test_symbolic_chmod_applies_per_file_and_directory(ctx: Path, root: Path) -> None:
    (ctx / "src" / "lib").chmod(0o700)
    (ctx / "src" / "lib" / "util.sh").chmod(0o600)
    run(copy_action(["src"], "/app/", source_root=str(ctx), mode="u=rwX,go=rX"), root)
    assert (root / "app" / "main.sh").stat().st_mode & 0o7777 == 0o755    # was 0755: x kept
    assert (root / "app" / "lib").stat().st_mode & 0o7777 == 0o755        # a directory: X
    assert (root / "app" / "lib" / "util.sh").stat().st_mode & 0o7777 == 0o644
    assert os.readlink(root / "app" / "run") == "main.sh"                 # links untouched
    run(copy_action(["README"], "/r", source_root=str(ctx), mode="0640"), root)
    assert (root / "r").stat().st_mode & 0o7777 == 0o640


# -- owners by name, read inside the root -----------------------------------------------------------
def _accounts(root: Path) -> None:
    (root / "data").mkdir()
    (root / "data" / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:2000::/home/app:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nappgrp:x:2000:\nstaff:x:50:\n")
    os.symlink("/data/passwd", root / "etc" / "passwd")        # resolved in the root, not the host


def test_owner_names_resolve_in_the_root(ctx: Path, root: Path) -> None:
    _accounts(root)
    run(copy_action(["README"], "/a", source_root=str(ctx), owner="app"), root)
    assert (root / "a").stat().st_uid == 1000 and (root / "a").stat().st_gid == 2000
    run(copy_action(["README"], "/b", source_root=str(ctx), owner="app:staff"), root)
    assert ((root / "b").stat().st_uid, (root / "b").stat().st_gid) == (1000, 50)
    run(copy_action(["README"], "/c", source_root=str(ctx), owner="77"), root)
    assert ((root / "c").stat().st_uid, (root / "c").stat().st_gid) == (77, 77)
    with pytest.raises(UnknownUser, match="unable to find user ghost"):
        run(copy_action(["README"], "/d", source_root=str(ctx), owner="ghost"), root)
    with pytest.raises(UnknownUser, match="unable to find group nogroup"):
        run(copy_action(["README"], "/d", source_root=str(ctx), owner="app:nogroup"), root)
    # WORKDIR keeps BuildKit's fallback: an unknown user is root
    run(mkdir_action("/w/app", owner="app"), root)
    assert ((root / "w" / "app").stat().st_uid, (root / "w" / "app").stat().st_gid) == (1000, 2000)
    run(mkdir_action("/w/ghost", owner="ghost", owner_missing="root"), root)
    assert (root / "w" / "ghost").stat().st_uid == 0


def test_remove_op_stays_in_the_root(root: Path, tmp_path: Path) -> None:
    (root / "t" / "d").mkdir(parents=True)
    (root / "t" / "d" / "f").write_text("x")
    (tmp_path / "keep").write_text("host")
    os.symlink(str(tmp_path), root / "t" / "host")     # never followed
    os.symlink("/t", root / "via")
    run(fileops.remove_action("/via/d"), root)           # parents resolve in the root
    assert not (root / "t" / "d").exists()
    run(fileops.remove_action("/t"), root)
    assert not (root / "t").exists() and (tmp_path / "keep").read_text() == "host"
    with pytest.raises(FileActionError, match="root itself"):
        run(fileops.remove_action("/"), root)


def test_chown_op(root: Path) -> None:
    (root / "f").write_text("x")
    os.symlink("/etc", root / "l")
    run(fileops.chown_action("/f", (5, 6)), root)
    run(fileops.chown_action("/l", (7, 8)), root)
    assert ((root / "f").stat().st_uid, (root / "f").stat().st_gid) == (5, 6)
    assert (root / "l").lstat().st_uid == 7 and (root / "etc").stat().st_uid == 0


# -- sources from another root: globs, --parents, --exclude -----------------------------------------
@pytest.fixture
def other(tmp_path: Path) -> Path:
    o = tmp_path / "other"
    for rel in ("out/a.txt", "out/b.txt", "out/c.log", "out/sub/d.txt", "out/deep/er/e.txt", "out/[x].txt"):
        (o / rel).parent.mkdir(parents=True, exist_ok=True)
        (o / rel).write_text(rel)
    os.symlink("sub", o / "out" / "link")
    os.symlink("/out", o / "abs")                     # resolved inside the other root
    return o


def _tree(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_glob_sources_match_per_component(other: Path, root: Path) -> None:
    def copy(src: str, dest: str) -> None:
        run(copy_action([src], dest, source_root=str(other), glob=True, preserve_owner=True), root)

    copy("out/*.txt", "/g1/")
    assert _tree(root / "g1") == ["[x].txt", "a.txt", "b.txt"]
    copy("out/*/d.txt", "/g2/")                       # 'link' is not walked into
    assert _tree(root / "g2") == ["d.txt"]
    copy("out/**/*.txt", "/g3/")                      # '**' is one component, as in Go
    assert _tree(root / "g3") == ["d.txt"]
    copy("abs/[ab].txt", "/g4/")                      # a symlinked prefix resolves in the root
    assert _tree(root / "g4") == ["a.txt", "b.txt"]
    copy("out/\\[x].txt", "/g5/")                     # escaped: a literal name
    assert _tree(root / "g5") == ["[x].txt"]
    copy("out/s?b", "/g6")                            # one directory: its contents
    assert _tree(root / "g6") == ["d.txt"]
    with pytest.raises(FileActionError, match=r"source '/out/\*\.bin' matched no files"):
        copy("out/*.bin", "/g7/")
    with pytest.raises(FileActionError, match="must be a directory"):
        copy("out/*.txt", "/g8")
    with pytest.raises(FileActionError, match="bad pattern"):
        copy("out/[a", "/g9/")


def test_glob_parents_and_exclude(other: Path, root: Path) -> None:
    run(copy_action(["out/*/d.txt"], "/p1/", source_root=str(other), glob=True, parents=""), root)
    assert _tree(root / "p1") == ["out", "out/sub", "out/sub/d.txt"]
    run(copy_action(["out/*/d.txt"], "/p2/", source_root=str(other), glob=True, parents="out"), root)
    assert _tree(root / "p2") == ["sub", "sub/d.txt"]
    run(copy_action(["out/deep"], "/p3/", source_root=str(other), parents="out"), root)
    assert _tree(root / "p3") == ["deep", "deep/er", "deep/er/e.txt"]
    rules = [{"pattern": "*.log", "regex": r"^[^/]*\.log$", "exclusion": False},
             {"pattern": "deep", "regex": r"^deep$", "exclusion": False},
             {"pattern": "deep/er/e.txt", "regex": r"^deep/er/e\.txt$", "exclusion": True},
             {"pattern": "sub", "regex": r"^sub$", "exclusion": False}]
    run(copy_action(["out"], "/x/", source_root=str(other), exclude=rules), root)
    assert _tree(root / "x") == ["[x].txt", "a.txt", "b.txt", "deep", "deep/er", "deep/er/e.txt", "link"]
    run(copy_action(["out/*"], "/y/", source_root=str(other), glob=True, exclude=rules[:1]), root)
    assert "c.log" not in os.listdir(root / "y") and "a.txt" in os.listdir(root / "y")
