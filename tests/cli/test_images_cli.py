"""`images`, `tag`, `rmi`, `inspect`, `history`, `image …`, `system df|prune`: docker's flags,
output shape and exit codes, in-process against a per-test store."""

from __future__ import annotations

import json
import re

import pytest

from registry.image import StoreImage, resolve_image
from registry.store import DirStore
from tests.support.images import tiny_image


@pytest.fixture
def populated(cli):  # type: ignore[no-untyped-def]
    store = DirStore(cli.root)
    a = tiny_image(store, "docker.io/library/alpha:1", content=b"a", layers=2)
    b = tiny_image(store, "localhost:5000/team/beta:latest", content=b"b", created=1_800_000_000)
    d = tiny_image(store, content=b"dangling")
    return store, a, b, d


def _id(store: DirStore, desc) -> str:  # type: ignore[no-untyped-def]
    return StoreImage(store, desc).id.short


def test_images_table(cli, populated) -> None:
    store, a, b, d = populated
    r = cli("images")
    assert r.code == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert re.match(r"^REPOSITORY\s{3,}TAG\s{3,}IMAGE ID\s{3,}CREATED\s{3,}SIZE$", lines[0])
    rows = [re.split(r"\s{3,}", line) for line in lines[1:]]
    assert rows[0][:3] == ["localhost:5000/team/beta", "latest", _id(store, b)]
    assert ["alpha", "1", _id(store, a)] in [row[:3] for row in rows]
    assert ["<none>", "<none>", _id(store, d)] in [row[:3] for row in rows]
    assert all(row[3].endswith(" ago") and re.match(r"^[\d.]+(B|kB|MB)$", row[4]) for row in rows)
    # every column starts at the same offset on every line (tabwriter alignment)
    col = lines[0].index("IMAGE ID")
    assert all(line[col:col + 12] in (_id(store, x) for x in (a, b, d)) for line in lines[1:])


def test_images_flags(cli, populated) -> None:
    store, a, b, d = populated
    q = cli("images", "-q")
    assert q.stdout.split() == [_id(store, b), _id(store, a), _id(store, d)] or \
        sorted(q.stdout.split()) == sorted([_id(store, b), _id(store, a), _id(store, d)])
    full = cli("images", "-q", "--no-trunc").stdout.split()
    assert all(x.startswith("sha256:") and len(x) == 71 for x in full)
    dig = cli("images", "--digests").stdout.splitlines()
    assert "DIGEST" in dig[0] and str(a.digest) in "".join(dig)
    js = [json.loads(line) for line in cli("images", "--format", "json").stdout.splitlines()]
    assert {"Repository", "Tag", "ID", "Digest", "CreatedSince", "CreatedAt", "Size"} <= set(js[0])
    assert {(x["Repository"], x["Tag"]) for x in js} == {
        ("alpha", "1"), ("localhost:5000/team/beta", "latest"), ("<none>", "<none>")}
    tmpl = cli("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.splitlines()
    assert set(tmpl) == {"alpha:1", "localhost:5000/team/beta:latest", "<none>:<none>"}
    tab = cli("images", "--format", "table {{.Repository}}\\t{{.ID}}").stdout.splitlines()
    assert re.match(r"^REPOSITORY\s+IMAGE ID$", tab[0]) and len(tab) == 4
    assert cli("images", "alpha").stdout.count("\n") == 2
    assert cli("images", "-f", "dangling=true", "-q").stdout.split() == [_id(store, d)]
    assert cli("images", "-f", "reference=*/team/*", "-q").stdout.split() == [_id(store, b)]
    bad = cli("images", "-f", "bogus=1")
    assert bad.code == 125 and "unsupported filter" in bad.stderr
    assert cli("images", "--bogus").code == 125


def test_tag_and_rmi(cli, populated) -> None:
    store, a, _, _ = populated
    a_id = StoreImage(store, a).id
    assert cli("tag", "alpha:1", "alpha:2").code == 0
    assert cli("tag", _id(store, a), "registry.example.com/x/y:z").code == 0
    assert resolve_image(store, "registry.example.com/x/y:z").digest == a.digest
    bad = cli("tag", "alpha:1", "Bad:Tag")
    assert bad.code == 1 and "invalid reference" in bad.stderr and bad.stdout == ""
    dig = cli("tag", "alpha:1", f"alpha@{a.digest}")
    assert dig.code == 1 and "digest" in dig.stderr
    missing = cli("tag", "nope", "x")
    assert missing.code == 1 and missing.stderr.startswith("error: no such image: nope:latest")

    # by ID with several names: refused without -f (docker's conflict)
    r = cli("rmi", _id(store, a))
    assert r.code == 1 and "must be forced" in r.stderr and "multiple repositories" in r.stderr
    # by name: untag only while other names remain
    r = cli("rmi", "alpha:2")
    assert r.code == 0 and r.stdout == "Untagged: alpha:2\n"
    r = cli("rmi", "-f", _id(store, a))
    assert r.code == 0
    assert "Untagged: alpha:1\n" in r.stdout and "Untagged: registry.example.com/x/y:z\n" in r.stdout
    assert r.stdout.rstrip().endswith(f"Deleted: {a_id}")
    assert not store.has(a.digest)                     # blobs collected right away
    r = cli("rmi", "nope", "localhost:5000/team/beta")
    assert r.code == 1 and "no such image: nope:latest" in r.stderr
    assert "Deleted: sha256:" in r.stdout               # the existing one is still removed


def test_rmi_refuses_image_a_container_uses(cli, populated) -> None:
    from registry.gc import write_root

    store, a, _, _ = populated
    write_root(store, "containers", "abc123", [a])
    r = cli("rmi", "alpha:1")
    assert r.code == 1 and "in use" in r.stderr and store.has(a.digest)
    assert cli("rmi", "-f", "alpha:1").code == 0
    assert store.has(a.digest)                          # the container's root keeps the blobs


def test_inspect(cli, populated) -> None:
    store, a, _, _ = populated
    r = cli("inspect", "alpha:1")
    assert r.code == 0
    (view,) = json.loads(r.stdout)
    assert view["Id"] == str(StoreImage(store, a).id) and view["RepoTags"] == ["alpha:1"]
    assert view["Descriptor"]["digest"] == str(a.digest) and view["Config"]["Cmd"] == ["sh"]
    assert r.stdout.startswith("[\n    {")                # docker's 4-space indent
    assert cli("inspect", "--format", "{{.Id}} {{.Os}}", "alpha:1").stdout == \
        f"{StoreImage(store, a).id} linux\n"
    assert cli("inspect", "-f", "{{json .Config.Cmd}}", "alpha:1").stdout == '["sh"]\n'
    r = cli("inspect", "alpha:1", "nope")
    assert r.code == 1 and len(json.loads(r.stdout)) == 1 and "no such object: nope" in r.stderr
    r = cli("inspect", "nope")
    assert r.code == 1 and json.loads(r.stdout) == []


def test_history(cli, populated) -> None:
    store, a, _, _ = populated
    r = cli("history", "alpha:1")
    lines = r.stdout.splitlines()
    assert re.match(r"^IMAGE\s+CREATED\s+CREATED BY\s+SIZE\s+COMMENT$", lines[0])
    assert lines[1].startswith(_id(store, a)) and "0B" in lines[1]
    assert all(line.startswith("<missing>") for line in lines[2:]) and len(lines) == 4
    assert "#(nop)" in lines[1] and "ago" in lines[1]
    assert cli("history", "-q", "alpha:1").stdout.split() == [_id(store, a), "<missing>", "<missing>"]
    assert cli("history", "-H", "alpha:1").stdout == r.stdout
    assert cli("history", "--human=false", "alpha:1").stdout == cli("history", "-H=false", "alpha:1").stdout
    assert cli("history", "-H=maybe", "alpha:1").code == 125
    raw = cli("history", "-H=false", "--no-trunc", "alpha:1").stdout
    assert "2023-11-14T22:13:20Z" in raw and str(StoreImage(store, a).id) in raw
    assert re.search(r"\s\d{2,}\s", raw)                # sizes in bytes
    js = [json.loads(line) for line in cli("history", "--format", "json", "alpha:1").stdout.splitlines()]
    assert js[0]["CreatedBy"].startswith("/bin/sh -c #(nop)") and len(js) == 3
    assert cli("history", "nope").code == 1


def test_long_created_by_is_truncated_like_docker(cli) -> None:
    from registry.imagebuild import store_image
    from registry.layertar import TarEntry, write_layer
    from registry.model import History, ImageConfig

    store = DirStore(cli.root)
    layer = write_layer([TarEntry("f", "file", size=1, data=b"f")], store)
    long = "/bin/sh -c " + "x" * 100
    cfg = ImageConfig("amd64", "linux", diff_ids=(layer.diff_id,), history=(History(created_by=long),))
    store_image(store, cfg, [layer], tags=["docker.io/library/long:1"])
    out = cli("history", "long:1").stdout
    assert ("/bin/sh -c " + "x" * 33 + "…") in out
    assert long in cli("history", "--no-trunc", "long:1").stdout


def test_image_group_aliases_and_prune(cli, populated) -> None:
    store, a, b, d = populated
    assert cli("image", "ls", "-q").stdout == cli("images", "-q").stdout
    assert cli("image", "list").code == 0
    assert json.loads(cli("image", "inspect", "alpha:1").stdout)[0]["RepoTags"] == ["alpha:1"]
    d_id = StoreImage(store, d).id
    r = cli("image", "prune", "-f")
    assert r.code == 0
    assert f"deleted: {d_id}" in r.stdout
    assert "Deleted Images:" in r.stdout and "Total reclaimed space:" in r.stdout
    assert not store.has(d.digest) and store.has(a.digest)
    r = cli("image", "prune", "-f")
    assert r.stdout == "Total reclaimed space: 0B\n"
    # without -f it asks; "n" (or no answer) keeps everything
    r = cli("image", "prune", "-a", stdin=b"n\n")
    assert "Are you sure" in r.stderr and r.stdout == "" and store.has(a.digest)
    r = cli("image", "prune", "-a", stdin=b"y\n")
    assert "untagged: alpha:1" in r.stdout and "untagged: localhost:5000/team/beta:latest" in r.stdout
    assert store.entries() == [] and list(store.walk()) == []
    assert cli("image", "rm", "alpha:1").code == 1


def test_system_df_and_prune(cli, populated) -> None:
    store, a, b, d = populated
    r = cli("system", "df")
    lines = r.stdout.splitlines()
    assert re.match(r"^TYPE\s+TOTAL\s+ACTIVE\s+SIZE\s+RECLAIMABLE$", lines[0])
    assert re.match(r"^Images\s+3\s+0\s+\S+B\s+\S+B \(100%\)$", lines[1])
    js = [json.loads(x) for x in cli("system", "df", "--format", "json").stdout.splitlines()]
    assert js[0]["Type"] == "Images" and js[0]["TotalCount"] == "3"
    store.put(b"garbage", "x")
    r = cli("system", "prune", "-f")
    assert r.code == 0 and f"deleted: {StoreImage(store, a).id}" not in r.stdout
    assert not store.has(d.digest) and store.has(a.digest)
    assert all(store.has(x) for x in StoreImage(store, b).blobs())
    live = set(StoreImage(store, a).blobs()) | set(StoreImage(store, b).blobs())
    assert set(store.walk()) == live


@pytest.mark.parametrize("verb", [["images"], ["history", "alpha:1"], ["system", "df"]])
def test_a_bad_format_template_is_a_usage_error(cli, populated, verb: list[str]) -> None:  # type: ignore[no-untyped-def]
    r = cli(*verb, "--format", "{{.NoSuchField}}")
    assert r.code == 125
    assert r.stderr.startswith("error: --format: ") and "NoSuchField" in r.stderr
    assert "internal error" not in r.stderr and r.stdout == ""
