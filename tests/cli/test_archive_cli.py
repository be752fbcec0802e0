"""`save`, `load`, `import` through the CLI: files, pipes, stdout/stdin, docker's messages."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from registry.image import StoreImage, resolve_image
from registry.store import DirStore
from tests.support.images import tiny_image

REPO_ROOT = Path(__file__).resolve().parents[2]
PYBUILD = [sys.executable, "-m", "builder"]


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYBUILD_ROOT": str(root), "SOURCE_DATE_EPOCH": "1700000000"}


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_save_load_files(cli, tmp_path: Path, fmt: str) -> None:
    store = DirStore(cli.root)
    a = tiny_image(store, "docker.io/library/alpha:1", "docker.io/library/alpha:2", content=b"a")
    out = tmp_path / "x.tar"
    r = cli("save", "--format", fmt, "-o", str(out), "alpha")      # a bare repository: all its tags
    assert r.code == 0 and r.stdout == "" and out.is_file()
    other = tmp_path / "other"
    from tests.support.stores import run_cli

    r = run_cli(["load", "-i", str(out)], root=other)
    assert r.code == 0
    assert sorted(r.stdout.splitlines()) == ["Loaded image: alpha:1", "Loaded image: alpha:2"]
    assert resolve_image(DirStore(other), "alpha:2").digest == a.digest
    r = run_cli(["load", "-q"], root=tmp_path / "third", stdin=out.read_bytes())
    assert r.code == 0 and r.stdout == ""
    assert resolve_image(DirStore(tmp_path / "third"), "alpha:1").digest == a.digest


def test_save_by_id_and_errors(cli, tmp_path: Path) -> None:
    store = DirStore(cli.root)
    a = tiny_image(store, "docker.io/library/alpha:1", content=b"a")
    out = tmp_path / "id.tar"
    assert cli("save", "-o", str(out), StoreImage(store, a).id.short).code == 0
    from tests.support.stores import run_cli

    r = run_cli(["load", "-i", str(out)], root=tmp_path / "o")
    assert r.stdout == f"Loaded image ID: {StoreImage(store, a).id}\n"
    r = cli("save", "-o", str(tmp_path / "n.tar"), "nope")
    assert r.code == 1 and "no such image: nope:latest" in r.stderr
    assert not (tmp_path / "n.tar").exists()
    r = cli("save", "--format", "zip", "-o", str(out), "alpha:1")
    assert r.code == 125
    r = cli("save", "-o", str(tmp_path / "no" / "such" / "dir.tar"), "alpha:1")
    assert r.code == 1 and "No such file or directory" in r.stderr
    r = cli("load", "-i", str(tmp_path / "missing.tar"))
    assert r.code == 1 and "missing.tar: No such file or directory" in r.stderr
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"junk" * 100)
    r = cli("load", "-i", str(bad))
    assert r.code == 1 and r.stderr.startswith(f"error: {bad}: not a tar archive")


def test_save_streams_to_a_pipe_and_load_reads_one(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    a = tiny_image(DirStore(src), "docker.io/library/alpha:1", content=b"a")
    save = subprocess.Popen([*PYBUILD, "save", "alpha:1"], cwd=REPO_ROOT, env=_env(src),
                            stdout=subprocess.PIPE)
    load = subprocess.run([*PYBUILD, "load"], cwd=REPO_ROOT, env=_env(dst), stdin=save.stdout,
                          capture_output=True, text=True, check=False)
    assert save.stdout is not None
    save.stdout.close()
    assert save.wait() == 0 and load.returncode == 0, load.stderr
    assert load.stdout == "Loaded image: alpha:1\n"
    assert resolve_image(DirStore(dst), "alpha:1").digest == a.digest


def test_save_refuses_a_terminal(tmp_path: Path) -> None:
    tiny_image(DirStore(tmp_path), "docker.io/library/alpha:1", content=b"a")
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([*PYBUILD, "save", "alpha:1"], cwd=REPO_ROOT, env=_env(tmp_path),
                              stdout=follower, stderr=subprocess.PIPE, text=True, check=False, timeout=30)
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 1 and "cowardly refusing to save to a terminal" in proc.stderr


def _rootfs() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("bin/hello")
        info.size = 3
        info.mode = 0o755
        tf.addfile(info, io.BytesIO(b"hi\n"))
    return buf.getvalue()


def test_import_file_and_stdin(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(_rootfs())
    r = cli("import", "-c", 'CMD ["/bin/hello"]', "--change", "ENV A=1", "-m", "msg", str(rootfs), "me/app:1")
    assert r.code == 0 and r.stdout.startswith("sha256:") and len(r.stdout.strip()) == 71
    store = DirStore(cli.root)
    img = resolve_image(store, "me/app:1")
    assert str(img.id) == r.stdout.strip()
    assert img.config.config.cmd == ("/bin/hello",) and img.config.history[0].comment == "msg"
    again = cli("import", "-", stdin=_rootfs())
    assert again.code == 0
    untagged = resolve_image(store, again.stdout.strip())
    assert untagged.names == () and untagged.config.history[0].comment == "Imported from -"
    # same input, same epoch: the same ID as the same import from the file
    assert cli("import", str(rootfs)).stdout == again.stdout
    r = cli("import", str(tmp_path / "missing.tar"), "x")
    assert r.code == 1 and "missing.tar" in r.stderr
    r = cli("import", "-c", "RUN true", str(rootfs), "x")
    assert r.code == 125 and "RUN is not supported" in r.stderr
    r = cli("import", "http://example.invalid/r.tar", "x")
    assert r.code == 125 and "URL" in r.stderr
