"""Cache-key documents (canonical, domain-separated, explainable) and build-flag parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.cachekey import KeyDoc, explain
from builder.errors import UsageError
from builder.options import (
    check_platform,
    parse_build_args,
    parse_cache,
    parse_output,
    parse_secret,
)
from registry.digest import Digest


def doc(**kw) -> KeyDoc:  # type: ignore[no-untyped-def]
    base = {"kind": "run", "parent": "sha256:" + "1" * 64, "op": {"argv": ["sh", "-c", "x"], "env": ["A=1"],
            "args": {"V": "1"}}, "inputs": {}, "detail": {"text": "RUN x"}}
    base.update(kw)
    return KeyDoc(**base)


def test_key_is_canonical_and_ignores_detail() -> None:
    a = doc()
    b = KeyDoc(a.kind, a.parent, dict(reversed(list(a.op.items()))), {}, {"text": "RUN   x  # other"})
    assert a.digest() == b.digest()
    assert a.digest() != Digest.of(a.canonical()), "keys are domain-separated"
    assert doc(op={**a.op, "env": ["A=2"]}).digest() != a.digest()


def test_explain_names_the_arg_the_file_and_the_parent() -> None:
    old = doc()
    assert [str(r) for r in explain(old, doc(op={**old.op, "args": {"V": "2"}, "env": ["A=1"]}))] == \
        ["build arg V changed (1 -> 2)"]
    def rec(mode: str, ch: str) -> str:
        return f"file {mode} sha256:" + ch * 64

    files_old = {"0:context:src/": {"src/a": rec("644", "a"), "src/b": rec("644", "b")}}
    files_new = {"0:context:src/": {"src/a": rec("755", "a"), "src/c": rec("644", "c")}}
    c_old = KeyDoc("copy", old.parent, {"dest": "/x"}, {"0:context:src/": "sha256:" + "1" * 64},
                   {"files": files_old})
    c_new = KeyDoc("copy", old.parent, {"dest": "/x"}, {"0:context:src/": "sha256:" + "2" * 64},
                   {"files": files_new})
    reasons = [str(r) for r in explain(c_old, c_new)]
    assert "file 'src/a' changed (mode 644 -> mode 755)" in reasons
    assert any(r.startswith("file 'src/b' removed") for r in reasons)
    assert any(r.startswith("file 'src/c' added") for r in reasons)
    moved = KeyDoc(old.kind, "sha256:" + "9" * 64, old.op, old.inputs, old.detail)
    assert [str(r) for r in explain(old, moved)] == ["parent step changed"]


def test_build_args_files_env_and_precedence(tmp_path: Path) -> None:
    f = tmp_path / "args"
    f.write_text("# comment\nA=from-file\nB=file\nFROM_ENV\n\n")
    got = parse_build_args(["B=flag", "C", "D"], [str(f)], environ={"C": "env", "FROM_ENV": "e"})
    assert got == {"A": "from-file", "B": "flag", "C": "env", "FROM_ENV": "e"}


def test_output_cache_and_secret_specs() -> None:
    assert parse_output("type=local,dest=out").dest == "out"
    assert parse_output("out").type == "local"
    assert parse_output("type=oci,dest=x.tar").type == "oci"
    with pytest.raises(UsageError):
        parse_output("type=tar")
    with pytest.raises(UsageError):
        parse_output("type=weird,dest=x")
    spec = parse_cache("type=registry,ref=r/c:1,mode=max", flag="--cache-to")
    assert (spec.ref, spec.mode) == ("r/c:1", "max")
    with pytest.raises(UsageError):
        parse_cache("type=registry,ref=r,mode=all", flag="--cache-to")
    assert parse_secret("id=t,src=/x").src == "/x"
    assert parse_secret("id=t,env=TOKEN").env == "TOKEN"
    with pytest.raises(UsageError):
        parse_secret("src=/x")


def test_only_the_host_platform() -> None:
    from registry.imagebuild import host_arch

    assert check_platform(f"linux/{host_arch()}") == f"linux/{host_arch()}"
    with pytest.raises(UsageError, match="only the host platform"):
        check_platform("linux/s390x" if host_arch() != "s390x" else "linux/amd64")
