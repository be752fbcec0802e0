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


STAGES = """\
FROM busybox AS one
RUN echo one > /one
FROM busybox AS two
COPY --from=one /one /one
RUN cat /one > /two
FROM busybox AS unused
RUN exit 1
"""


def test_target_skips_unused_stages_and_no_cache_filter(busybox_store, tmp_path: Path) -> None:
    root = busybox_store.store.root
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": STAGES})
    _, rec = must_build(root, ctx, "--target", "two")
    assert ran(rec) == ["RUN echo one > /one", "COPY --from=one /one /one", "RUN cat /one > /two"]
    _, rec = must_build(root, ctx, "--target", "two", "--no-cache-filter", "one")
    assert ran(rec) == ["RUN echo one > /one"]


def test_memo_fast_path_checks_every_input(busybox_store, context: Path) -> None:
    from builder.memo import memo_key, try_memo
    from builder.options import make_options
    from builder.progress import Collect
    from registry.store import DirStore

    root = busybox_store.store.root
    first, _ = must_build(root, context, "-t", "memo:1")
    store = DirStore(root)
    opts = make_options(context_dir=str(context), dockerfile=None, tags=["memo:1"])
    assert memo_key(opts) is not None
    hit = try_memo(store, opts, Collect())
    assert hit is not None and hit.image_id == first
    assert {s.status for s in hit.record.steps} <= {"CACHED", "META"}
    # any moved input means "build normally"
    assert try_memo(store, make_options(context_dir=str(context), dockerfile=None,
                                        build_args=["VERSION=9"]), Collect()) is None
    os.utime(context / "a.txt", None)
    assert try_memo(store, opts, Collect()) is None
    must_build(root, context, "-t", "memo:1")             # refreshes the memo (all steps cached)
    assert try_memo(store, opts, Collect()) is not None
    busybox = store.resolve("docker.io/library/busybox:latest")
    store.tag("docker.io/library/busybox:latest", store.resolve("docker.io/library/memo:1"))
    assert try_memo(store, opts, Collect()) is None       # the base image moved
    store.tag("docker.io/library/busybox:latest", busybox)
    assert try_memo(store, make_options(context_dir=str(context), dockerfile=None, tags=["memo:1"],
                                        no_cache=True), Collect()) is None
