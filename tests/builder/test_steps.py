"""Instruction semantics, checked on real builds: the image config docker writes for the
metadata instructions, COPY/ADD path rules, RUN failures, cache mounts, outputs."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.records import Records
from registry.image import resolve_image
from registry.store import DirStore
from tests.builder.helpers import build, must_build, write_tree
from tests.support.stores import run_cli

pytestmark = [pytest.mark.needs_root]

METADATA = """\
FROM busybox
MAINTAINER Jane <jane@example.com>
ENV A=1 B="two words"
ENV C=$A-${B} A=changed
LABEL l1=v1 "l 2"="v 2"
EXPOSE 80 443/udp 8000-8001
VOLUME /data /logs
USER 1000:1000
WORKDIR rel
WORKDIR sub
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --retries=3 CMD true
SHELL ["/bin/sh", "-ec"]
CMD echo hi
ENTRYPOINT ["/bin/sh"]
ONBUILD RUN echo child
"""


def config_of(root: Path, ref: str) -> dict:  # type: ignore[type-arg]
    image = resolve_image(DirStore(root), ref)
    return json.loads(image.raw_config())


def test_metadata_instructions_set_dockers_config_fields(busybox_store, tmp_path: Path) -> None:
    root = busybox_store.store.root
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": METADATA})
    must_build(root, ctx, "-t", "meta:1", "--label", "from-cli=yes")
    cfg = config_of(root, "meta:1")
    c = cfg["config"]
    env = dict(e.split("=", 1) for e in c["Env"])
    assert env["A"] == "changed" and env["B"] == "two words" and env["C"] == "1-two words"
    assert c["Labels"] == {"org.opencontainers.image.title": "busybox", "l1": "v1", "l 2": "v 2",
                           "from-cli": "yes"}
    assert c["ExposedPorts"] == {"80/tcp": {}, "443/udp": {}, "8000/tcp": {}, "8001/tcp": {}}
    assert c["Volumes"] == {"/data": {}, "/logs": {}}
    assert c["User"] == "1000:1000"
    assert c["WorkingDir"] == "/rel/sub"
    assert c["StopSignal"] == "SIGTERM"
    assert c["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000, "Retries": 3}
    assert c["Shell"] == ["/bin/sh", "-ec"]
    assert c["Cmd"] == ["/bin/sh", "-ec", "echo hi"]          # set in this stage: kept by ENTRYPOINT
    assert c["Entrypoint"] == ["/bin/sh"]
    assert c["OnBuild"] == ["RUN echo child"]
    assert cfg["author"] == "Jane <jane@example.com>"
    history = cfg["history"]
    assert history[0]["created_by"].startswith("busybox-static")
    meta = [h for h in history[1:] if h.get("empty_layer")]
    assert any(h["created_by"] == "ENV C=1-two words A=changed" for h in meta)
    workdirs = [h for h in history if h["created_by"].startswith("WORKDIR")]
    assert [h.get("empty_layer", False) for h in workdirs] == [False, False]   # they create dirs
    assert len(cfg["rootfs"]["diff_ids"]) == 1 + 2


def test_entrypoint_resets_inherited_cmd(busybox_store, tmp_path: Path) -> None:
    root = busybox_store.store.root
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": 'FROM busybox\nENTRYPOINT ["echo"]\n'})
    must_build(root, ctx, "-t", "ep:1")
    c = config_of(root, "ep:1")["config"]
    assert c["Entrypoint"] == ["echo"] and "Cmd" not in c


COPY_RULES = """\
FROM busybox
COPY a.txt /f1
COPY a.txt /d1/
COPY dir /d2
COPY dir/ /d3/
COPY *.txt /d4/
COPY link /d5/
COPY --chown=1000:33 --chmod=0600 a.txt /d7/
COPY --parents dir/sub/y.txt /d8/
COPY --exclude=*.txt dir /d9/
COPY <<EOF /d10/inline.txt
inline $MSG
EOF
COPY --chmod=u+x,g+w a.txt /d11/
WORKDIR /w
COPY a.txt rel/
"""


def test_copy_path_rules(busybox_store, tmp_path: Path) -> None:
    root = busybox_store.store.root
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": "ARG MSG=heredoc\n" + COPY_RULES.replace(
        "FROM busybox\n", "FROM busybox\nARG MSG\n"), "a.txt": "A\n", "b.txt": "B\n",
        "dir/x.txt": "X\n", "dir/sub/y.txt": "Y\n", "ignored.txt": "no\n",
        ".dockerignore": "ignored.txt\n"})
    (ctx / "link").symlink_to("a.txt")
    out = tmp_path / "out"
    must_build(root, ctx, "-o", f"type=local,dest={out}")
    assert (out / "f1").read_text() == "A\n"
    assert (out / "d1/a.txt").read_text() == "A\n"
    for d in ("d2", "d3"):
        assert sorted(str(p.relative_to(out / d)) for p in (out / d).rglob("*")) == \
            ["sub", "sub/y.txt", "x.txt"]
    assert sorted(p.name for p in (out / "d4").iterdir()) == ["a.txt", "b.txt"]   # ignored.txt not sent
    assert not (out / "d5/link").is_symlink() and (out / "d5/link").read_text() == "A\n"
    st = (out / "d7/a.txt").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 33, 0o600)
    assert (out / "d8/dir/sub/y.txt").read_text() == "Y\n"
    assert sorted(str(p.relative_to(out / "d9")) for p in (out / "d9").rglob("*")) == ["sub", "sub/y.txt"]
    assert (out / "d10/inline.txt").read_text() == "inline heredoc\n"
    assert (out / "w/rel/a.txt").read_text() == "A\n"
    assert (out / "d11/a.txt").stat().st_mode & 0o7777 == 0o764


def test_copy_several_sources_needs_a_directory(busybox_store, tmp_path: Path) -> None:
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nCOPY a b /dest\n", "a": "", "b": ""})
    res = build(busybox_store.store.root, ctx)
    assert res.code == 1
    assert "Dockerfile:2:" in res.stderr and "must be a directory ending in '/'" in res.stderr


def test_copy_excluded_source_names_the_pattern(busybox_store, tmp_path: Path) -> None:
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nCOPY secret.env /\n",
                                        "secret.env": "x", ".dockerignore": "*.env\n"})
    res = build(busybox_store.store.root, ctx)
    assert res.code == 1
    assert "not found in the build context" in res.stderr
    assert "excluded by .dockerignore:1" in res.stderr


def test_failing_run_reports_location_step_and_stderr(busybox_store, tmp_path: Path) -> None:
    root = busybox_store.store.root
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nENV X=1\n"
                                        "RUN echo out; echo 'it broke' >&2; exit 3\nRUN true\n"})
    res = build(root, ctx)
    assert res.code == 1
    assert "error: Dockerfile:3: step 3/4 RUN echo out; echo 'it broke' >&2; exit 3: " \
           "process exited with code 3" in res.stderr
    assert "it broke" in res.stderr
    rec = Records(DirStore(root)).last()
    assert rec is not None and rec.status == "failed"
    failed = next(s for s in rec.steps if s.status == "FAILED")
    assert failed.exit_code == 3
    logs = run_cli(["builds", "logs", rec.id, "--step", str(failed.index)], root=root)
    assert logs.stdout == "out\nit broke\n"


def test_cache_mount_persists_and_stays_out_of_the_image(busybox_store, tmp_path: Path) -> None:
    root = busybox_store.store.root
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": (
        "FROM busybox\nRUN --mount=type=cache,target=/cache,id=t1 "
        "echo x >> /cache/n && wc -l < /cache/n > /count\n")})
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    must_build(root, ctx, "-o", f"type=local,dest={out1}")
    must_build(root, ctx, "--no-cache", "-o", f"type=local,dest={out2}")
    assert (out1 / "count").read_text().strip() == "1"
    assert (out2 / "count").read_text().strip() == "2"
    assert not (out2 / "cache").exists()


def test_iidfile_and_metadata_file(busybox_store, tmp_path: Path) -> None:
    root = busybox_store.store.root
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo hi > /hi\n"})
    iid, meta = tmp_path / "iid", tmp_path / "meta.json"
    image_id, _ = must_build(root, ctx, "--iidfile", str(iid), "--metadata-file", str(meta))
    assert iid.read_text() == image_id
    doc = json.loads(meta.read_text())
    assert doc["containerimage.config.digest"] == image_id
    run_step = next(s for s in doc["pybuild.steps"] if s["instruction"].startswith("RUN"))
    assert run_step["status"] == "RAN" and run_step["layer"].startswith("sha256:")


@pytest.fixture
def http_files(tmp_path: Path) -> Iterator[str]:
    served = write_tree(tmp_path / "www", {"file.txt": "over http\n"})
    os.utime(served / "file.txt", (1_600_000_000, 1_600_000_000))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):  # type: ignore[no-untyped-def]
            super().__init__(*a, directory=str(served), **kw)

        def log_message(self, *a):  # type: ignore[no-untyped-def]
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_add_url_and_git(busybox_store, tmp_path: Path, http_files: str) -> None:
    repo = tmp_path / "repo"
    write_tree(repo, {"README": "from git\n"})
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    import hashlib

    digest = "sha256:" + hashlib.sha256(b"over http\n").hexdigest()
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": (
        f"FROM busybox\nADD --checksum={digest} {http_files}/file.txt /web/\n"
        f"ADD file://{repo}.git /src/\n")})
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), f"{repo}.git"], check=True)
    out = tmp_path / "out"
    must_build(busybox_store.store.root, ctx, "-o", f"type=local,dest={out}")
    assert (out / "web/file.txt").read_text() == "over http\n"
    assert int((out / "web/file.txt").stat().st_mtime) == 1_600_000_000      # Last-Modified
    assert (out / "src/README").read_text() == "from git\n"
    assert not (out / "src/.git").exists()
    bad = write_tree(tmp_path / "bad", {"Dockerfile": (
        f"FROM busybox\nADD --checksum=sha256:{'0' * 64} {http_files}/file.txt /web/\n")})
    res = build(busybox_store.store.root, bad)
    assert res.code == 1 and "checksum mismatch" in res.stderr


FROM_SOURCES = """\
FROM busybox AS base
RUN mkdir -p /out && echo base > /out/base.txt && chown 33:33 /out/base.txt
FROM busybox
COPY --from=extras e.txt /e.txt
COPY --from=busybox /etc/group /from-image-group
COPY --from=base /out/ /copied/
COPY --link c.txt /linked/c.txt
RUN --mount=type=bind,source=c.txt,target=/mnt/c.txt cat /mnt/c.txt > /from-bind.txt
RUN --mount=type=bind,from=base,source=/out/base.txt,target=/mnt/b cat /mnt/b > /from-stage.txt
RUN --network=none ls /sys/class/net > /nets.txt
"""


def test_sources_from_contexts_stages_images(busybox_store, tmp_path: Path) -> None:
    extra = write_tree(tmp_path / "extra", {"e.txt": "from a named context\n"})
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": FROM_SOURCES, "c.txt": "ctx\n"})
    out = tmp_path / "out"
    must_build(busybox_store.store.root, ctx, "--build-context", f"extras={extra}",
               "-o", f"type=local,dest={out}")
    assert (out / "e.txt").read_text() == "from a named context\n"
    assert (out / "from-image-group").read_text().startswith("root:x:0:")
    copied = out / "copied" / "base.txt"
    assert copied.read_text() == "base\n" and (copied.stat().st_uid, copied.stat().st_gid) == (33, 33)
    assert (out / "linked/c.txt").read_text() == "ctx\n"
    assert (out / "from-bind.txt").read_text() == "ctx\n"
    assert (out / "from-stage.txt").read_text() == "base\n"
    assert (out / "nets.txt").read_text() == "lo\n"
    assert not (out / "mnt").exists()          # mount points are not left in the image


def test_archive_and_tar_outputs(busybox_store, tmp_path: Path) -> None:
    import tarfile

    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo hi > /hi\n"})
    oci, fs = tmp_path / "img.tar", tmp_path / "fs.tar"
    must_build(busybox_store.store.root, ctx, "-t", "outs:1", "-o", f"type=oci,dest={oci}",
               "-o", f"type=tar,dest={fs}")
    with tarfile.open(oci) as t:
        names = t.getnames()
    assert "index.json" in names and "oci-layout" in names
    with tarfile.open(fs) as t:
        member = t.extractfile("hi")
        assert member is not None and member.read() == b"hi\n"
        assert "bin/busybox" in t.getnames()


def test_secret_env_and_tmpfs_mounts(busybox_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PB_TOKEN", "t0ken")
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": (
        "FROM busybox\n"
        "RUN --mount=type=secret,id=tok,env=TOKEN --mount=type=tmpfs,target=/scratch "
        "echo \"len=${#TOKEN}\" > /secret.txt && touch /scratch/x "
        "&& mount | grep -c ' /scratch ' > /tmpfs.txt\n")})
    out = tmp_path / "out"
    must_build(busybox_store.store.root, ctx, "--secret", "id=tok,env=PB_TOKEN",
               "-o", f"type=local,dest={out}")
    assert (out / "secret.txt").read_text() == "len=5\n"
    assert (out / "tmpfs.txt").read_text() == "1\n"
    assert not (out / "scratch").exists()
    # the secret's value is in no cache key: another value is still a cache hit
    monkeypatch.setenv("PB_TOKEN", "other-value")
    _, rec = must_build(busybox_store.store.root, ctx, "--secret", "id=tok,env=PB_TOKEN")
    assert [s.status for s in rec.steps if s.instruction.startswith("RUN")] == ["CACHED"]
