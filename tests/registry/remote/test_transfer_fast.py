"""`pybuild push|pull` read without click (builder.commands.transfer.push_fast/pull_fast): the
same command lines give the same result, output and exit code as the click commands, and
anything unusual is left to click (None)."""

from __future__ import annotations

import io
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from builder.commands import transfer
from registry.store import DirStore
from tests.registry.remote.conftest import make_image
from tests.support.fakeregistry import FakeRegistry
from tests.support.stores import run_cli


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["push", "a"], (None, ["a"], {})),
        (["--root", "/r", "push", "-q", "a", "b"], ("/r", ["a", "b"], {"quiet": True})),
        (["--root=/r", "push", "a", "-j", "2", "--jobs=3"], ("/r", ["a"], {"jobs": "3"})),
        (["push", "--insecure-registry", "h:1", "--insecure-registry=h:2", "a"],
         (None, ["a"], {"insecure": ["h:1", "h:2"]})),
        (["push", "--tls-verify=false", "--chunk-size", "8MiB", "a", "--", "-b"],
         (None, ["a", "-b"], {"tls_verify": "false", "chunk_size": "8MiB"})),
        (["pull", "--platform", "linux/arm64", "--allow-foreign-urls", "r"],
         (None, ["r"], {"platform": "linux/arm64", "allow_foreign_urls": True})),
        (["push", "--help"], None),
        (["push", "-qj4", "a"], None),
        (["push", "--quiet=yes", "a"], None),
        (["push", "--nope", "a"], None),
        (["push", "-j"], None),
        (["--debug", "push", "a"], None),
        (["--root=", "push", "a"], None),
        (["pull", "--chunk-size", "1", "r"], None),
    ],
)
def test_fast_parse_reads_like_click_or_declines(argv: list[str], expected: object,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYBUILD_ROOT", raising=False)
    got = transfer.fast_parse(argv, argv[argv.index("push") if "push" in argv else argv.index("pull")])
    if expected is None:
        assert got is None
        return
    root, positionals, opts = got  # type: ignore[misc]
    want_root, want_pos, want_opts = expected  # type: ignore[misc]
    assert (root, positionals) == (want_root, want_pos)
    assert {k: v for k, v in opts.items() if v != []} == want_opts


def test_fast_path_declines_values_click_refuses(tmp_path: Path) -> None:
    a_file = tmp_path / "f"
    a_file.write_text("x")
    for argv in (["push", "-j", "0", "a"], ["push", "-j", "x", "a"], ["push", "--tls-verify", "maybe", "a"],
                 ["push", "--chunk-size", "lots", "a"], ["push", "--digestfile", str(tmp_path), "a"],
                 ["push", "--cert-dir", str(a_file), "a"], ["push", "a", "b", "c"], ["push"],
                 ["pull", "--platform", "linux", "r"], ["pull", "a", "b"],
                 ["--root", str(a_file), "pull", "r"]):
        verb = "push" if "push" in argv else "pull"
        fast = transfer.push_fast if verb == "push" else transfer.pull_fast
        assert fast(argv) is None, argv


def _run(fast: bool, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        if fast:
            verb = "push" if "push" in argv else "pull"
            code = (transfer.push_fast if verb == "push" else transfer.pull_fast)(argv)
            assert code is not None
        else:
            res = run_cli(argv)
            return res.code, res.stdout, res.stderr
    return code, out.getvalue(), err.getvalue()


def test_fast_and_click_paths_push_and_pull_the_same(fake_registry_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src: FakeRegistry = fake_registry_factory()
    img = make_image(src, "app/fast", layer_sizes=(50_000,))
    results = {}
    for fast in (True, False):
        root = tmp_path / f"store-{fast}"
        dest: FakeRegistry = fake_registry_factory()
        pulled = _run(fast, ["--root", str(root), "pull", "-q", f"{src.host}/app/fast:latest"])
        digestfile = tmp_path / f"digest-{fast}"
        pushed = _run(fast, ["--root", str(root), "push", f"{src.host}/app/fast:latest",
                             f"{dest.host}/copy/fast:1", "-j", "2", "--digestfile", str(digestfile)])
        assert dest.manifests[("copy/fast", "1")][0] == img.manifest
        assert digestfile.read_text() == img.digest
        code, out, err = pushed
        # per-blob lines come in completion order (parallel uploads): compare them as a set
        results[fast] = (pulled, (code, out, sorted(err.replace(dest.host, "DEST").splitlines())))
        assert DirStore(root).resolve(f"{src.host}/app/fast:latest").digest.hex == img.digest.split(":")[1]
    assert results[True] == results[False]
    (code, out, lines) = results[True][1]
    assert code == 0 and out.strip() == img.digest and "Pushing DEST/copy/fast:1" in lines


def test_fast_path_errors_are_the_clis(tmp_path: Path) -> None:
    """A failure inside the fast path raises the same exception the CLI presents (same text,
    same exit code), because cli.main calls it inside its own error handling."""
    from registry.errors import RegistryError

    with pytest.raises(RegistryError) as exc:
        transfer.push_fast(["--root", str(tmp_path / "s"), "push", "nothing/here:1"])
    res = run_cli(["push", "nothing/here:1"], root=tmp_path / "s")
    assert res.code == exc.value.exit_code and str(exc.value) in res.stderr


def test_transfer_module_imports_no_click() -> None:
    import subprocess

    code = ("import sys, builder.commands.transfer as t; assert t.fast_parse(['push', 'a'], 'push'); "
            "sys.stdout.write(str('click' in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[3])
    assert proc.stdout == "False"
