"""builder.plan on parsed Dockerfiles: global vs stage ARGs, predefined args, FROM resolution,
--target pruning, the stage DAG and its parallel levels, unused build args."""

from __future__ import annotations

import pytest

import grammar
from builder.errors import BuildError, StageNotFound
from builder.plan import Platforms, make_plan

PLAT = Platforms("linux", "amd64", "")


def plan(text: str, **kw):  # type: ignore[no-untyped-def]
    return make_plan(grammar.parse(text), platforms=PLAT, **kw)


MULTI = """\
ARG BASE=busybox
FROM ${BASE} AS deps
RUN echo deps
FROM busybox AS unused
RUN echo never
FROM scratch AS assets
COPY x /x
FROM deps AS final
COPY --from=assets /x /x
RUN echo final
"""


def test_stages_bases_and_pruning() -> None:
    p = plan(MULTI)
    assert [s.name for s in p.stages] == ["deps", "assets", "final"]     # 'unused' is skipped
    by = {s.name: s for s in p.all_stages}
    assert by["deps"].base.kind == "image" and by["deps"].base.value == "busybox"
    assert by["assets"].base.kind == "scratch"
    assert by["final"].base.kind == "stage" and by["final"].base.stage == 0
    assert by["final"].deps == {0, 2}
    assert p.levels() == [[0, 2], [3]]        # deps and assets can build in parallel
    assert p.target == 3
    assert p.total_steps == 2 + 2 + 3


def test_target_and_build_args_in_from() -> None:
    p = plan(MULTI, target="deps", build_args={"BASE": "alpine:3"})
    assert [s.name for s in p.stages] == ["deps"]
    assert p.stages[0].base.value == "alpine:3"
    assert p.meta_args == {"BASE": "alpine:3"}


def test_unknown_target_suggests() -> None:
    with pytest.raises(StageNotFound) as err:
        plan(MULTI, target="finall")
    assert err.value.hint == "did you mean 'final'?"


def test_predefined_platform_args_in_from() -> None:
    p = plan("FROM busybox:${TARGETARCH}\n")
    assert p.stages[0].base.value == "busybox:amd64"


def test_unused_build_args_warned_but_proxy_args_are_not() -> None:
    p = plan("ARG USED\nFROM busybox\nARG LATER\n",
             build_args={"USED": "1", "LATER": "2", "NOPE": "3", "HTTP_PROXY": "http://p"})
    assert p.unused_args == {"NOPE"}
    assert p.warnings and "NOPE" in p.warnings[0]


def test_copy_from_stage_index_and_errors() -> None:
    p = plan("FROM busybox\nRUN true\nFROM busybox\nCOPY --from=0 /a /a\n")
    assert p.stages[1].deps == {0}
    with pytest.raises(StageNotFound):
        plan("FROM busybox\nCOPY --from=1 /a /a\nFROM busybox\n")
    with pytest.raises(BuildError):
        plan("FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\n")


def test_from_named_build_context() -> None:
    p = plan("FROM base\n", build_contexts={"base": "docker-image://busybox"})
    assert p.stages[0].base.kind == "context"


def test_no_from_is_an_error() -> None:
    with pytest.raises(BuildError, match="no FROM"):
        plan("ARG X=1\n")
