"""A real OCI registry for tests: Debian's docker-registry (CNCF distribution) on 127.0.0.1.

``registry_url`` (session): plain HTTP, no auth, a free loopback port, storage in a tmp dir.
``registry_tls_basic`` (session): TLS with a test CA (made with ``cryptography``) and htpasswd
basic auth (testdata/registry-auth/htpasswd). ``registry_token`` (session): plain HTTP with
token auth; an in-process token server (tests/support/tokenserver.py) signs RS256 JWTs whose
certificate is the registry's rootcertbundle. The registry processes stop at the session's end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

TESTDATA = Path(__file__).resolve().parents[2] / "testdata"


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 15.0,
                  context: object | None = None, log: IO[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = b""
            if log is not None:
                log.seek(0)
                err = log.read()[-2000:]
            raise RuntimeError(f"registry exited with {proc.returncode}: {err.decode(errors='replace')}")
        try:
            urllib.request.urlopen(url, timeout=2, context=context)  # type: ignore[arg-type]
            return
        except urllib.error.HTTPError:
            return  # it answers (401 for an auth-protected registry is an answer)
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"registry at {url} did not answer within {timeout}s: {last}")


def start_registry(storage: Path, *, config: Path | None = None,
                   extra_env: dict[str, str] | None = None,
                   scheme: str = "http",
                   ssl_context: object | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    """Start docker-registry on a free loopback port; returns ('127.0.0.1:PORT', process)."""
    exe = shutil.which("docker-registry")
    if exe is None:
        from tests.conftest import skip_or_fail

        skip_or_fail("docker-registry not installed (apt-get install docker-registry)")
        raise AssertionError("unreachable")
    port = free_loopback_port()
    env = {**os.environ,
           "REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}",
           "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(storage),
           "REGISTRY_STORAGE_DELETE_ENABLED": "true",
           **(extra_env or {})}
    # Its log goes to an unnamed file, never to a pipe: nobody reads a pipe during the session,
    # and once ~64 KiB of "blob unknown" lines fill it, every request of the registry blocks.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([exe, "serve", str(config or TESTDATA / "registry.yml")], env=env,
                                stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_for_http(f"{scheme}://127.0.0.1:{port}/v2/", proc, context=ssl_context, log=log)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return f"127.0.0.1:{port}", proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain-HTTP registry on loopback for the whole session: '127.0.0.1:PORT'."""
    addr, proc = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield addr
    finally:
        stop(proc)


@dataclass(frozen=True)
class AuthRegistry:
    """A registry that needs credentials: its address and what a client needs to reach it."""

    addr: str
    username: str
    password: str
    certs_d: Path | None = None  # a certs.d-style dir holding <addr>/ca.crt (TLS variant)
    ca: Path | None = None
    token_server: Any = None  # tests.support.tokenserver.TokenServer (token variant)


HTPASSWD_USERS = {"tester": "test-password-1", "pusher": "test-password-2"}


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.support.tlsutil import make_ca

    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def registry_tls_basic(tmp_path_factory: pytest.TempPathFactory, test_ca: Any) -> Iterator[AuthRegistry]:
    """TLS (test CA) + htpasswd basic auth: user 'tester' / 'test-password-1'."""
    import ssl

    from tests.support.tlsutil import issue_server_cert

    base = tmp_path_factory.mktemp("reg-tls")
    cert, key = issue_server_cert(test_ca, base, hosts=["127.0.0.1", "localhost"])
    env = {
        "REGISTRY_HTTP_TLS_CERTIFICATE": str(cert),
        "REGISTRY_HTTP_TLS_KEY": str(key),
        "REGISTRY_AUTH": "htpasswd",
        "REGISTRY_AUTH_HTPASSWD_REALM": "pybuild-test",
        "REGISTRY_AUTH_HTPASSWD_PATH": str(TESTDATA / "registry-auth" / "htpasswd"),
    }
    ctx = ssl.create_default_context(cafile=str(test_ca.cert))
    addr, proc = start_registry(base / "data", extra_env=env, scheme="https", ssl_context=ctx)
    certs_d = base / "certs.d"
    (certs_d / addr).mkdir(parents=True)
    shutil.copy(test_ca.cert, certs_d / addr / "ca.crt")
    try:
        yield AuthRegistry(addr, "tester", HTPASSWD_USERS["tester"], certs_d, test_ca.cert)
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def registry_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    """Token auth: the registry trusts JWTs from an in-process token server ('tester' can push
    anything; anonymous clients may pull repositories under 'public/')."""
    from tests.support.tokenserver import TokenServer

    base = tmp_path_factory.mktemp("reg-token")
    server = TokenServer(
        base, users=dict(HTPASSWD_USERS), service="pybuild-test-registry", issuer="pybuild-test-issuer"
    ).start()
    env = {
        "REGISTRY_AUTH": "token",
        "REGISTRY_AUTH_TOKEN_REALM": server.realm,
        "REGISTRY_AUTH_TOKEN_SERVICE": server.service,
        "REGISTRY_AUTH_TOKEN_ISSUER": server.issuer,
        "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE": str(server.cert_path),
    }
    try:
        addr, proc = start_registry(base / "data", extra_env=env)
    except BaseException:
        server.stop()
        raise
    try:
        yield AuthRegistry(addr, "tester", HTPASSWD_USERS["tester"], token_server=server)
    finally:
        stop(proc)
        server.stop()
