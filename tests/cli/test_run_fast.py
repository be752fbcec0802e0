"""`pybuild run`'s click-free fast path (builder.commands.run.fast_parse) reads every command
line exactly as click does, or hands it to click (None). Checked on a table of tricky lines
and on random ones built from the same option table."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import click
import pytest

from builder.commands import run as run_mod

REPO_ROOT = Path(__file__).resolve().parents[2]


def click_parse(argv: list[str]) -> dict[str, object] | None:
    """What click makes of `pybuild run ARGV` (the command's parameters), None if it refuses."""
    try:
        ctx = run_mod.run.make_context("run", list(argv))
    except click.exceptions.Exit:
        return None
    except click.ClickException:
        return None
    return dict(ctx.params)


def fast(argv: list[str]) -> dict[str, object] | None:
    got = run_mod.fast_parse(["run", *argv])
    if got is None:
        return None
    root, image, command, flags = got
    assert root is None or "PYBUILD_ROOT" in os.environ
    return {"image": image, "command": command, **flags}


LINES = [
    ["busybox"],
    ["busybox", "true"],
    ["--rm", "busybox", "true"],
    ["--rm", "--network", "none", "busybox", "true"],
    ["--rm", "--network=none", "busybox", "sh", "-c", "echo hi"],
    ["--net", "host", "busybox"],
    ["-it", "busybox", "sh"],
    ["-ti", "--rm", "busybox"],
    ["-itd", "busybox"],
    ["-eFOO=bar", "-e", "X", "--env=Y=1", "busybox", "env"],
    ["-e", "-x", "busybox"],                      # a value that looks like an option
    ["-p8080:80", "-p", "127.0.0.1:1:2/udp", "busybox"],
    ["-h", "myhost", "busybox", "hostname"],
    ["-hmyhost", "busybox"],
    ["-ih", "name", "busybox"],                   # a flag, then a short option taking the next arg
    ["-ihname", "busybox"],
    ["--name", "", "busybox"],
    ["--name", "a", "--name", "b", "busybox"],    # the last one wins
    ["--pull", "never", "busybox"],
    ["--pull", "sometimes", "busybox"],           # not a choice: click's error
    ["--pull=always", "busybox"],
    ["-c", "512", "--pids-limit", "-1", "--stop-timeout", "3", "busybox"],
    ["-c", "x", "busybox"],
    ["--stop-timeout", " 7 ", "busybox"],
    ["--cpu-shares=1_024", "busybox"],
    ["--memory", "32m", "--memory-swap", "-1", "--cpus", "0.5", "busybox"],
    ["-m32m", "busybox"],
    ["--rm=true", "busybox"],                     # a flag with a value: click's error
    ["--bogus", "busybox"],
    ["-Z", "busybox"],
    ["-iZ", "busybox"],
    ["--help"],
    ["--rm", "--help", "busybox"],
    ["busybox", "--help"],                        # the command's own --help
    ["busybox", "--rm", "-it"],                   # after IMAGE everything is the command
    ["--", "busybox", "true"],
    ["--rm", "--", "busybox", "--", "x"],
    ["-", "true"],                                # "-" is an argument, not an option
    ["--rm"],                                     # no IMAGE
    ["--name"],                                   # missing value
    ["-e"],
    [],
    ["--userns", "", "busybox"],
    ["--userns=auto:size=65536", "busybox"],
    ["--security-opt", "seccomp=unconfined", "--security-opt=no-new-privileges:false", "busybox"],
    ["--ulimit", "nofile=1024:2048", "--cap-add", "ALL", "--cap-drop=NET_RAW", "busybox"],
    ["--mount", "type=tmpfs,target=/t", "--tmpfs", "/run:size=1m", "-v", "/a:/b:ro", "busybox"],
    ["--label", "a=b", "-l", "c", "--restart", "on-failure:3", "--stop-signal", "SIGINT", "busybox"],
    ["--entrypoint", "", "busybox"],
    ["--entrypoint=/bin/sh", "-w", "/tmp", "-u", "1000:1000", "busybox"],
    ["--read-only", "--init", "--privileged", "busybox"],
    ["--platform", "linux/arm64", "--runtime", "runc", "busybox"],
    ["--network-alias", "web", "--network-alias=db", "busybox"],
    ["--env-file", "/nonexistent/file", "busybox"],
    ["--env-file", "/tmp", "busybox"],            # a directory: click's error
    ["--env-file=/etc/hostname", "busybox"],
]


@pytest.mark.parametrize("argv", LINES, ids=lambda a: " ".join(a) or "<empty>")
def test_fast_parse_agrees_with_click(argv: list[str]) -> None:
    want, got = click_parse(argv), fast(argv)
    if got is not None:
        assert want is not None, f"fast path accepted what click refuses: {argv}"
        assert got == want
    elif argv and argv[0] not in ("--help",) and "--help" not in argv[:2] and want is not None:
        # falling back is always safe; here it should not be needed
        pytest.fail(f"fast path gave up on an ordinary line: {argv}")


def _random_line(rng: random.Random) -> list[str]:
    values = ["x", "", "-v", "--rm", "1", "-1", "a=b", "/tmp", "never", "0.5", "-", "--"]
    out: list[str] = []
    for _ in range(rng.randint(0, 6)):
        o = rng.choice(run_mod.OPTIONS)
        decl = rng.choice(o.decls)
        if o.kind == run_mod.FLAG:
            if len(decl) == 2 and rng.random() < 0.3:   # a short cluster
                others = [d for p in run_mod.OPTIONS for d in p.decls if len(d) == 2]
                out.append(decl + rng.choice(others)[1:])
            else:
                out.append(decl)
            continue
        value = rng.choice(values + list(o.choices))
        style = rng.random()
        if style < 0.4:
            out += [decl, value]
        elif style < 0.7 and decl.startswith("--"):
            out.append(f"{decl}={value}")
        elif len(decl) == 2:
            out.append(decl + value)
        else:
            out += [decl, value]
    if rng.random() < 0.1:
        out.append("--")
    if rng.random() < 0.9:
        out.append(rng.choice(["busybox", "-", "img:tag"]))
        out += rng.choice([[], ["true"], ["sh", "-c", "x"], ["--rm", "-it"]])
    return out


def test_fast_parse_agrees_with_click_on_random_lines() -> None:
    rng = random.Random(1234)
    accepted = 0
    for _ in range(3000):
        argv = _random_line(rng)
        got = fast(argv)
        if got is None:
            continue
        accepted += 1
        assert got == click_parse(argv), argv
    assert accepted > 1000          # the fast path is the common path, not the exception


def test_group_options_before_run(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    assert run_mod.fast_parse(["--root", store, "run", "busybox"])[:3] == (store, "busybox", ())
    assert run_mod.fast_parse([f"--root={store}", "run", "busybox", "x"])[:3] == (store, "busybox", ("x",))
    (tmp_path / "file").write_text("")
    assert run_mod.fast_parse(["--root", str(tmp_path / "file"), "run", "busybox"]) is None  # click: a file
    assert run_mod.fast_parse(["--debug", "run", "busybox"]) is None
    assert run_mod.fast_parse(["--version", "run", "busybox"]) is None
    assert run_mod.fast_parse(["images"]) is None


def test_run_does_not_import_click(tmp_path: Path) -> None:
    """An ordinary `pybuild run` never imports click (a bad flag still gets click's message)."""
    probe = ("import json, sys; from builder.cli import main; code = main(sys.argv[1:]); "
             "print(json.dumps([code, 'click' in sys.modules]), file=sys.stderr)")
    root = str(tmp_path / "store")
    r = subprocess.run([sys.executable, "-c", probe, "--root", root, "run", "--rm", "--pull", "never",
                        "nosuchimage"], capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    assert json.loads(r.stderr.strip().splitlines()[-1]) == [125, False], r.stderr
    assert "error:" in r.stderr
    r = subprocess.run([sys.executable, "-c", probe, "--root", root, "run", "--bogus", "busybox"],
                       capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    assert json.loads(r.stderr.strip().splitlines()[-1]) == [125, True]
    assert "No such option '--bogus'" in r.stderr
