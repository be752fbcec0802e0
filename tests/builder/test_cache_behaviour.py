"""The build cache as users see it (issue 6 "Must show"): a no-op rebuild runs nothing, touching
mtimes runs nothing, one changed file re-runs from the COPY that takes it (and `builds show
--last` names it), a changed build arg re-runs from its first use, SOURCE_DATE_EPOCH builds in
two fresh stores give the same digest."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.builder.helpers import must_build, ran, write_tree
from tests.support.stores import run_cli

pytestmark = [pytest.mark.needs_root]

DOCKERFILE = """\
FROM busybox
COPY a.txt /a.txt
COPY src/ /src/
RUN cat /a.txt /src/b.txt > /joined.txt
ARG VERSION=1
RUN echo "version $VERSION" > /version.txt
CMD ["cat", "/version.txt"]
"""


@pytest.fixture
def context(tmp_path: Path) -> Path:
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": DOCKERFILE, "a.txt": "a\n", "src/b.txt": "b\n",
                                        "src/c/d.txt": "d\n"})
    old = time.time() - 3600
    for p in ctx.rglob("*"):
        os.utime(p, (old, old))
    return ctx


def test_noop_rebuild_and_touch_run_nothing(busybox_store, context: Path) -> None:
    root = busybox_store.store.root
    first, rec1 = must_build(root, context)
    assert len(ran(rec1)) == 4
    second, rec2 = must_build(root, context)
    assert second == first, "a fully cached rebuild gives the same image"
    assert ran(rec2) == []
    for p in context.rglob("*"):
        os.utime(p, None)                    # new mtimes, same content
    third, rec3 = must_build(root, context)
    assert ran(rec3) == [] and third == first


def test_changed_file_reruns_from_its_copy(busybox_store, context: Path) -> None:
    root = busybox_store.store.root
    must_build(root, context)
    (context / "src" / "c" / "d.txt").write_text("changed\n")
    _, rec = must_build(root, context)
    assert ran(rec) == ["COPY src/ /src/", "RUN cat /a.txt /src/b.txt > /joined.txt",
                        'RUN echo "version $VERSION" > /version.txt']
    copy = next(s for s in rec.steps if s.instruction == "COPY src/ /src/")
    assert any("src/c/d.txt" in r for r in copy.reasons), copy.reasons
    shown = run_cli(["builds", "show", "--last"], root=root)
    assert shown.code == 0
    assert "src/c/d.txt" in shown.stdout and "CACHED" in shown.stdout


def test_build_arg_reruns_from_first_use(busybox_store, context: Path) -> None:
    root = busybox_store.store.root
    must_build(root, context)
    _, rec = must_build(root, context, "--build-arg", "VERSION=2")
    assert ran(rec) == ['RUN echo "version $VERSION" > /version.txt']
    step = next(s for s in rec.steps if s.status == "RAN")
    assert any("build arg VERSION" in r and "1" in r and "2" in r for r in step.reasons), step.reasons


def test_explain_cache_inline(busybox_store, context: Path) -> None:
    root = busybox_store.store.root
    must_build(root, context)
    (context / "a.txt").write_text("A\n")
    result = run_cli(["build", "--progress", "plain", "--explain-cache", str(context)], root=root)
    assert result.code == 0
    assert "cache miss: file 'a.txt' changed" in result.stderr


def test_source_date_epoch_is_reproducible(tmp_path: Path, busybox_image, context: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    ids = []
    for name in ("one", "two"):
        root = tmp_path / name
        shutil.copytree(busybox_image.store.root, root, symlinks=True)
        image_id, rec = must_build(root, context)
        assert len(ran(rec)) == 4
        ids.append(image_id)
        time.sleep(1.1)                       # a different wall clock for the second build
    assert ids[0] == ids[1]


def test_no_cache_runs_everything(busybox_store, context: Path) -> None:
    root = busybox_store.store.root
    must_build(root, context)
    _, rec = must_build(root, context, "--no-cache")
    assert len(ran(rec)) == 4
    step = next(s for s in rec.steps if s.status == "RAN")
    assert step.reasons[0].startswith("cache disabled")
