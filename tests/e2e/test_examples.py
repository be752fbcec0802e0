"""Every Dockerfile.examples/<name>: build (FROM busybox pulled through the docker.io mirror),
push to the real registry, pull into a fresh store, run, and compare stdout with expect.txt.

expect.txt: first line ``$ pybuild run IMAGE [ARGS...]``, then the expected stdout. Optional:
prebuild.txt (one build per line, run first in the example's directory, e.g. an ONBUILD base)
and build-args.txt (extra flags for the build, e.g. --secret)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.e2e.conftest import EXAMPLES, pybuild

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_registry]

NAMES = sorted(p.name for p in EXAMPLES.iterdir() if (p / "Dockerfile").is_file())


def read_expect(example: Path) -> tuple[list[str], str]:
    first, _, rest = (example / "expect.txt").read_text().partition("\n")
    words = shlex.split(first.lstrip("$ "))
    assert words[:3] == ["pybuild", "run", "IMAGE"], f"{example}/expect.txt: bad first line {first!r}"
    return words[3:], rest


def extra_lines(example: Path, name: str) -> list[list[str]]:
    path = example / name
    if not path.is_file():
        return []
    return [shlex.split(line) for line in path.read_text().splitlines() if line.strip()]


def test_at_least_eight_examples() -> None:
    assert len(NAMES) >= 8
    for name in NAMES:
        assert (EXAMPLES / name / "expect.txt").is_file(), name


@pytest.mark.parametrize("name", NAMES)
def test_example_build_push_pull_run(name: str, tmp_path: Path, docker_io_mirror: str) -> None:
    example = EXAMPLES / name
    argv, expected = read_expect(example)
    builder_root, runner_root = tmp_path / "builder", tmp_path / "runner"
    for pre in extra_lines(example, "prebuild.txt"):
        res = pybuild(builder_root, "build", "-q", *pre, ".", cwd=example)
        assert res.returncode == 0, res.stderr
    ref = f"{docker_io_mirror}/examples/{name}:e2e"
    flags = [w for line in extra_lines(example, "build-args.txt") for w in line]
    res = pybuild(builder_root, "build", "--progress", "plain", *flags, "-t", ref, "--push", ".", cwd=example)
    assert res.returncode == 0, res.stderr
    image_id = res.stdout.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71, res.stdout

    pulled = pybuild(runner_root, "pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    run = pybuild(runner_root, "run", "--rm", ref, *argv)
    assert run.returncode == 0, run.stderr
    assert run.stdout == expected
