"""Volumes: the `volume` verbs, -v parsing, first-use copy-up, in-use refusal, rm -v."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runtime.containers import ContainerRecord, ContainerStore, MountSpec
from runtime.lifecycle import remove_container
from runtime.volumes import (
    VolumeError,
    VolumeInUse,
    VolumeStore,
    copy_tree,
    parse_volume_flag,
    plan_mounts,
    volumes_in_use,
)
from tests.support.stores import run_cli


def test_parse_volume_flag_forms(tmp_path: Path) -> None:
    assert parse_volume_flag("/data") == MountSpec("volume", "/data", "", anonymous=True)
    assert parse_volume_flag("cache:/var/cache:ro") == MountSpec("volume", "/var/cache", "cache",
                                                                  readonly=True)
    m = parse_volume_flag(f"{tmp_path}:/mnt:ro,z")
    assert (m.type, m.source, m.destination, m.readonly, m.options) == \
        ("bind", str(tmp_path), "/mnt", True, ("z",))
    assert parse_volume_flag("/data:ro").readonly
    for bad in ("cache:relative", "a:b:c:d", "bad name:/x"):
        with pytest.raises(VolumeError):
            parse_volume_flag(bad)


def test_volume_cli_lifecycle(tmp_path: Path) -> None:
    root = tmp_path / "store"
    r = run_cli(["volume", "create", "--label", "team=web", "data1"], root=root)
    assert (r.code, r.stdout) == (0, "data1\n")
    anon = run_cli(["volume", "create"], root=root).stdout.strip()
    assert len(anon) == 64
    ls = run_cli(["volume", "ls"], root=root)
    assert ls.stdout.splitlines()[0].split() == ["DRIVER", "VOLUME", "NAME"]
    assert "data1" in ls.stdout and anon in ls.stdout
    assert run_cli(["volume", "ls", "-q", "-f", "label=team=web"], root=root).stdout == "data1\n"
    view = json.loads(run_cli(["volume", "inspect", "data1"], root=root).stdout)[0]
    assert view["Name"] == "data1" and view["Labels"] == {"team": "web"} and view["Driver"] == "local"
    assert Path(view["Mountpoint"]) == root / "volumes" / "data1" / "_data"
    templ = run_cli(["volume", "inspect", "-f", "{{.Name}} {{.Scope}}", "data1"], root=root)
    assert templ.stdout == "data1 local\n"
    missing = run_cli(["volume", "rm", "nope"], root=root)
    assert missing.code == 1 and "no such volume" in missing.stderr
    prune = run_cli(["volume", "prune", "-f"], root=root)
    assert anon in prune.stdout and "data1" not in prune.stdout     # only anonymous ones by default
    assert run_cli(["volume", "rm", "data1"], root=root).stdout == "data1\n"
    assert run_cli(["volume", "ls", "-q"], root=root).stdout == ""


def test_in_use_volume_cannot_be_removed_and_rm_v_removes_anonymous(tmp_path: Path) -> None:
    root = tmp_path / "store"
    vs = VolumeStore(root / "volumes")
    cs = ContainerStore(root / "containers")
    mounts = plan_mounts(vs, [parse_volume_flag("named:/data"), parse_volume_flag("/scratch")],
                         image_volumes=["/var/lib/db", "/data"])
    assert [(m.destination, m.anonymous) for m in mounts] == [("/data", False), ("/scratch", True),
                                                               ("/var/lib/db", True)]
    c = cs.create(ContainerRecord(id=cs.new_id(), name="user", image="x", mounts=mounts))
    used = volumes_in_use(cs)
    assert used["named"] == [c.id]
    r = run_cli(["volume", "rm", "named"], root=root)
    assert r.code == 1 and "in use" in r.stderr
    with pytest.raises(VolumeInUse):
        vs.remove("named", users=used["named"])
    assert run_cli(["volume", "prune", "-f", "-a"], root=root).stdout.count("\n") <= 1  # nothing unused
    remove_container(root, c, volumes=True)
    names = {v.name for v in vs.list_all()}
    assert names == {"named"}          # anonymous ones went with the container, the named one stays


def test_first_use_copies_the_image_content_once(tmp_path: Path) -> None:
    image_dir = tmp_path / "rootfs" / "var" / "www"
    (image_dir / "sub").mkdir(parents=True)
    (image_dir / "index.html").write_text("from the image\n")
    (image_dir / "sub" / "x").write_text("x")
    os.symlink("index.html", image_dir / "link")
    os.chmod(image_dir / "index.html", 0o640)
    os.chown(image_dir / "sub" / "x", 33, 33)
    vs = VolumeStore(tmp_path / "volumes")
    vol = vs.create("www")
    assert vs.needs_populate(vol)
    vol = vs.populate(vol, image_dir)
    data = vol.data
    assert (data / "index.html").read_text() == "from the image\n"
    assert oct((data / "index.html").stat().st_mode & 0o777) == oct(0o640)
    assert (data / "sub" / "x").stat().st_uid == 33
    assert os.readlink(data / "link") == "index.html"
    # second use: never copied again, even after the user emptied it
    (data / "index.html").unlink()
    vs.populate(vs.get("www"), image_dir)
    assert not (data / "index.html").exists()
    # a named volume that already has content is not filled
    other = vs.create("full")
    (other.data / "mine").write_text("keep")
    assert not vs.needs_populate(other)


def test_copy_tree_never_follows_symlinks(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    os.symlink(str(secret), src / "escape")
    copy_tree(src, dst)
    assert (dst / "escape").is_symlink()
    assert os.readlink(dst / "escape") == str(secret)
