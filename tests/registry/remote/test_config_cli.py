"""The registries configuration file, CLI flags and the transfer verbs' help/usage behaviour."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from registry.reference import parse_reference
from registry.remote.config import ConfigError, RegistriesConfig
from registry.remote.errors import RemoteError
from registry.remote.progress import Event
from tests.support.stores import run_cli

REPO_ROOT = Path(__file__).resolve().parents[3]
HEAVY = {"requests", "urllib3", "lark", "zstandard", "cryptography"}


def test_config_file_mirrors_insecure_blocked_and_certs(tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    (certs / "reg.internal:5000").mkdir(parents=True)
    (certs / "reg.internal:5000" / "ca.crt").write_text("x")
    (certs / "reg.internal:5000" / "client.cert").write_text("x")
    (certs / "reg.internal:5000" / "client.key").write_text("x")
    conf = tmp_path / "registries.toml"
    conf.write_text(f"""
certs_d = ["{certs}"]
insecure_registries = ["legacy.example:80"]

[[registry]]
location = "docker.io"
  [[registry.mirror]]
  location = "127.0.0.1:5000"
  [[registry.mirror]]
  location = "mirror.example/dockerhub"
  insecure = true

[[registry]]
location = "docker.io/private"
[[registry]]
location = "blocked.example"
blocked = true
""")
    cfg = RegistriesConfig.load(conf, insecure_hosts=["cli.example"])
    eps = cfg.endpoints(parse_reference("busybox"))
    assert [(e.host, e.repository, e.mirror) for e in eps] == [
        ("127.0.0.1:5000", "library/busybox", True),
        ("mirror.example", "dockerhub/library/busybox", True),
        ("registry-1.docker.io", "library/busybox", False),
    ]
    # the most specific block wins (no mirrors for docker.io/private), pushes skip mirrors
    assert [e.host for e in cfg.endpoints(parse_reference("private/app"))] == ["registry-1.docker.io"]
    assert [e.host for e in cfg.endpoints(parse_reference("busybox"), for_push=True)] == [
        "registry-1.docker.io"
    ]
    with pytest.raises(RemoteError, match="blocked"):
        cfg.endpoints(parse_reference("blocked.example/x"))
    assert cfg.host_settings("mirror.example").insecure
    assert cfg.host_settings("legacy.example:80").insecure and cfg.host_settings("cli.example").insecure
    assert not cfg.host_settings("127.0.0.1:5000").insecure and cfg.host_settings("127.0.0.1:5000").loopback
    s = cfg.host_settings("reg.internal:5000")
    assert [p.name for p in s.ca_files] == ["ca.crt"] and s.client_cert is not None
    assert not s.insecure
    assert RegistriesConfig.load(conf, tls_verify=False).host_settings("any.example").insecure


def test_config_errors_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "r.toml"
    bad.write_text("[[registry]]\ninsecure = true\n")
    with pytest.raises(ConfigError, match="needs a 'location'") as info:
        RegistriesConfig.load(bad)
    assert str(bad) in str(info.value)
    bad.write_text("[[registry\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        RegistriesConfig.load(bad)
    monkeypatch.setenv("PYBUILD_REGISTRIES_CONF", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="file not found"):
        RegistriesConfig.load()
    monkeypatch.delenv("PYBUILD_REGISTRIES_CONF")
    (tmp_path / "home" / ".config" / "pybuild").mkdir(parents=True, exist_ok=True)
    (tmp_path / "home" / ".config" / "pybuild" / "registries.toml").write_text(
        '[[registry]]\nlocation = "x.example"\ninsecure = true\n'
    )
    assert RegistriesConfig.load().host_settings("x.example").insecure  # the default path is read


@pytest.mark.parametrize("verb", ["pull", "push", "login", "logout"])
def test_help_is_light(verb: str) -> None:
    code = (
        f"import sys, builder.cli; builder.cli.main([{verb!r}, '--help']); "
        "sys.stderr.write(' '.join(sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    loaded = {name.split(".")[0] for name in proc.stderr.split()}
    assert not HEAVY & loaded, f"{verb} --help imported {sorted(HEAVY & loaded)}"
    assert "Usage: pybuild" in proc.stdout


def test_cli_usage_errors(tmp_path: Path) -> None:
    res = run_cli(["login", "-p", "x", "--password-stdin", "-u", "u", "127.0.0.1:1"], stdin=b"y")
    assert res.code == 125 and "mutually exclusive" in res.stderr
    res = run_cli(["login", "--password-stdin", "127.0.0.1:1"], stdin=b"y")
    assert res.code == 125 and "--username" in res.stderr
    res = run_cli(["pull", "--platform", "linux", "busybox"], root=tmp_path / "s")
    assert res.code == 125 and "--platform" in res.stderr
    res = run_cli(["push", "--chunk-size", "lots", "busybox"], root=tmp_path / "s")
    assert res.code == 125 and "chunk-size" in res.stderr
    res = run_cli(["push", "nothing/here:1"], root=tmp_path / "s")
    assert res.code == 1 and "no such image" in res.stderr
    res = run_cli(["pull", "127.0.0.1:9/nothing:1"], root=tmp_path / "s")  # nothing listens on port 9
    assert (
        res.code == 1 and "error: GET https://127.0.0.1:9/v2/: [Errno 111] Connection refused" in res.stderr
    )


def test_password_flag_warns(tmp_path: Path) -> None:
    res = run_cli(["login", "-u", "u", "-p", "secret-on-cmdline", "127.0.0.1:9"])
    assert "WARNING! Using --password via the CLI is insecure" in res.stderr
    assert "secret-on-cmdline" not in res.stderr + res.stdout


def test_progress_renderer_plain_and_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    from builder.commands.transfer import _Renderer

    class FakeTTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    d = "sha256:" + "ab" * 32
    for tty in (False, True):
        err = FakeTTY() if tty else io.StringIO()
        monkeypatch.setattr(sys, "stderr", err)
        r = _Renderer("Pulling")
        r(Event("resolve", note="x/y:1"))
        r(Event("start", d, 2_000_000, 0))
        r.last_draw = 0.0
        r(Event("progress", d, 2_000_000, 1_000_000))
        r(Event("done", d, 2_000_000, 2_000_000))
        r(Event("warning", note="only 3 pulls left"))
        r.finish()
        out = err.getvalue()
        assert "abababababab: downloaded 2.0MB" in out and "warning: only 3 pulls left" in out
        assert ("[" in out and "\x1b[" in out) == tty  # bars only on a terminal
