"""`pybuild push|pull` read without click (builder.commands._optable over transfer.PUSH/PULL,
wired in builder.cli): every command line gives click's parameters or is left to click (None);
the two paths push and pull the same, with the same output, errors and exit codes; and an
ordinary push or pull never imports click."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import click
import pytest

from builder.commands import _optable, transfer
from registry.store import DirStore
from tests.registry.remote.conftest import make_image
from tests.support.fakeregistry import FakeRegistry
from tests.support.stores import run_cli

REPO_ROOT = Path(__file__).resolve().parents[3]
VERBS = {"push": transfer.PUSH, "pull": transfer.PULL}


def click_parse(verb: str, argv: list[str]) -> dict[str, object] | None:
    """What click makes of `pybuild VERB ARGV` (the command's parameters), None if it refuses."""
    try:
        ctx = getattr(transfer, verb).make_context(verb, list(argv))
    except (click.exceptions.Exit, click.ClickException):
        return None
    return dict(ctx.params)


def fast(verb: str, argv: list[str]) -> dict[str, object] | None:
    got = _optable.fast_parse([verb, *argv], VERBS[verb])
    if got is None:
        return None
    root, params = got
    assert root is None or "PYBUILD_ROOT" in os.environ
    return params


LINES = [
    ("push", ["a"]),
    ("push", ["-q", "a", "b"]),
    ("push", ["a", "-j", "2", "--jobs=3"]),                  # options after arguments
    ("push", ["--insecure-registry", "h:1", "--insecure-registry=h:2", "a"]),
    ("push", ["--tls-verify=false", "--chunk-size", "8MiB", "a", "--", "-b"]),
    ("push", ["--tls-verify", " Yes ", "a"]),
    ("push", ["--chunk-size", "", "a"]),
    ("push", ["-qj4", "a"]),                                  # a short cluster
    ("push", ["-j4", "a"]),
    ("push", ["-j", "0", "a"]),                               # out of range: click's error
    ("push", ["-j", "x", "a"]),
    ("push", ["-j", " 7 ", "a"]),
    ("push", ["--tls-verify", "maybe", "a"]),
    ("push", ["--chunk-size", "lots", "a"]),
    ("push", ["--digestfile", "/tmp", "a"]),                  # a directory: click's error
    ("push", ["--digestfile", "/nonexistent/d", "a"]),
    ("push", ["--cert-dir", "/etc/hostname", "a"]),           # a file: click's error
    ("push", ["--cert-dir", "/etc", "--cert-dir=/nonexistent", "a"]),
    ("push", ["a", "b", "c"]),                                # an extra argument
    ("push", []),                                             # no IMAGE
    ("push", ["--help"]),
    ("push", ["-h"]),
    ("push", ["--quiet=yes", "a"]),
    ("push", ["--nope", "a"]),
    ("push", ["-j"]),
    ("push", ["-", "b"]),
    ("push", ["--", "-q"]),
    ("pull", ["r"]),
    ("pull", ["--platform", "linux/arm64", "--allow-foreign-urls", "r"]),
    ("pull", ["--platform", "linux", "r"]),                   # not os/arch: click's error
    ("pull", ["--platform=", "r"]),
    ("pull", ["--chunk-size", "1", "r"]),                     # push's option
    ("pull", ["a", "b"]),
    ("pull", ["-q", "--tls-verify=0", "r", "-j", "8"]),
]


@pytest.mark.parametrize(("verb", "argv"), LINES, ids=lambda x: " ".join(x) if isinstance(x, list) else x)
def test_fast_parse_agrees_with_click(verb: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYBUILD_ROOT", raising=False)
    want, got = click_parse(verb, argv), fast(verb, argv)
    if got is not None:
        assert want is not None, f"fast path accepted what click refuses: {verb} {argv}"
        assert got == want
    elif want is not None and "--help" not in argv and "-h" not in argv:
        pytest.fail(f"fast path gave up on an ordinary line: {verb} {argv}")


def _random_line(rng: random.Random, verb: str) -> list[str]:
    table = VERBS[verb]
    values = ["x", "", "-q", "1", "0", "65", "true", "off", "/tmp", "/etc/hostname", "8MiB",
              "linux/amd64", "-"]
    out: list[str] = []
    for _ in range(rng.randint(0, 5)):
        o = rng.choice(table.options)
        decl = rng.choice(o.decls)
        if o.kind == _optable.FLAG:
            out.append(decl)
            continue
        value = rng.choice(values)
        style = rng.random()
        if style < 0.5 or (len(decl) > 2 and style < 0.7):
            out += [decl, value]
        elif decl.startswith("--"):
            out.append(f"{decl}={value}")
        else:
            out.append(decl + value)
        if rng.random() < 0.3:
            out.append(rng.choice(["img", "reg/img:1", "-"]))
    if rng.random() < 0.1:
        out.append("--")
    out += rng.choice([[], ["img"], ["img", "dest"], ["a", "b", "c"]])
    return out


@pytest.mark.parametrize("verb", ["push", "pull"])
def test_fast_parse_agrees_with_click_on_random_lines(verb: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYBUILD_ROOT", raising=False)
    rng = random.Random(4321)
    accepted = 0
    for _ in range(2000):
        argv = _random_line(rng, verb)
        got, want = fast(verb, argv), click_parse(verb, argv)
        if got is not None:
            accepted += 1
            assert got == want, argv
        elif want is not None:
            # the one value the fast path leaves to click on purpose: an empty boolean
            empty_bool = "--tls-verify=" in argv or any(
                a == "--tls-verify" and b == "" for a, b in zip(argv, argv[1:], strict=False))
            assert empty_bool, f"fast path gave up on an ordinary line: {argv}"
    assert accepted > 200


def test_group_options_before_the_verb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYBUILD_ROOT", raising=False)
    store = str(tmp_path / "store")
    assert _optable.fast_parse(["--root", store, "push", "a"], transfer.PUSH) == (
        store, fast("push", ["a"]))
    assert _optable.fast_parse([f"--root={store}", "pull", "r"], transfer.PULL)[0] == store  # type: ignore[index]
    (tmp_path / "file").write_text("")
    for argv in (["--root", str(tmp_path / "file"), "pull", "r"], ["--root=", "push", "a"],
                 ["--debug", "push", "a"], ["images"], []):
        assert _optable.fast_parse(argv, transfer.PUSH if "push" in argv else transfer.PULL) is None, argv
    monkeypatch.setenv("PYBUILD_ROOT", store)
    assert _optable.fast_parse(["pull", "r"], transfer.PULL)[0] == store  # type: ignore[index]


def _run(fast_path: bool, argv: list[str]) -> tuple[int, str, str]:
    """The CLI in-process (builder.cli.main): through the fast path, or with it switched off."""
    from unittest import mock

    if fast_path:
        res = run_cli(argv)
    else:
        with mock.patch.dict("builder.cli._FAST", clear=True):
            res = run_cli(argv)
    return res.code, res.stdout, res.stderr


def test_fast_and_click_paths_push_and_pull_the_same(fake_registry_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src: FakeRegistry = fake_registry_factory()
    img = make_image(src, "app/fast", layer_sizes=(50_000,))
    results = {}
    for fast_path in (True, False):
        root = tmp_path / f"store-{fast_path}"
        dest: FakeRegistry = fake_registry_factory()
        pulled = _run(fast_path, ["--root", str(root), "pull", "-q", f"{src.host}/app/fast:latest"])
        digestfile = tmp_path / f"digest-{fast_path}"
        pushed = _run(fast_path, ["--root", str(root), "push", f"{src.host}/app/fast:latest",
                                  f"{dest.host}/copy/fast:1", "-j", "2", "--digestfile", str(digestfile)])
        assert dest.manifests[("copy/fast", "1")][0] == img.manifest
        assert digestfile.read_text() == img.digest
        code, out, err = pushed
        # per-blob lines come in completion order (parallel uploads): compare them as a set
        results[fast_path] = (pulled, (code, out, sorted(err.replace(dest.host, "DEST").splitlines())))
        assert DirStore(root).resolve(f"{src.host}/app/fast:latest").digest.hex == img.digest.split(":")[1]
    assert results[True] == results[False]
    (code, out, lines) = results[True][1]
    assert code == 0 and out.strip() == img.digest and "Pushing DEST/copy/fast:1" in lines


def test_fast_path_errors_are_the_clis(tmp_path: Path) -> None:
    """A failure inside the fast path raises the same exception the click path presents (same
    text, same exit code): builder.cli presents both."""
    from registry.errors import RegistryError

    with pytest.raises(RegistryError) as exc:
        transfer.push_fast(["--root", str(tmp_path / "s"), "push", "nothing/here:1"])
    res = run_cli(["push", "nothing/here:1"], root=tmp_path / "s")
    assert res.code == exc.value.exit_code and str(exc.value) in res.stderr
    code, _, err = _run(False, ["--root", str(tmp_path / "s"), "push", "nothing/here:1"])
    assert (code, err) == (res.code, res.stderr)


def test_push_and_pull_do_not_import_click(tmp_path: Path) -> None:
    """An ordinary push/pull never imports click; a bad flag still gets click's message."""
    probe = ("import json, sys; from builder.cli import main; code = main(sys.argv[1:]); "
             "print(json.dumps([code, 'click' in sys.modules]), file=sys.stderr)")
    root = str(tmp_path / "store")
    for argv, want in ((["push", "-q", "nothing/here:1"], [1, False]),
                       (["pull", "-q", "127.0.0.1:1/nothing:1"], None),
                       (["push", "--bogus", "a"], [125, True])):
        r = subprocess.run([sys.executable, "-c", probe, "--root", root, *argv], capture_output=True,
                           text=True, cwd=REPO_ROOT, check=False, timeout=60)
        code, imported = json.loads(r.stderr.strip().splitlines()[-1])
        if want is None:                  # the pull fails to connect; click is what matters here
            assert imported is False and code != 0, r.stderr
        else:
            assert [code, imported] == want, r.stderr
    assert "No such option" in r.stderr and "--bogus" in r.stderr


def test_transfer_module_imports_no_click() -> None:
    code = ("import sys, builder.commands.transfer as t, builder.commands._optable as o; "
            "assert o.fast_parse(['push', 'a'], t.PUSH); sys.stdout.write(str('click' in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=REPO_ROOT)
    assert proc.stdout == "False"
