"""A real OCI registry for tests: Debian's docker-registry (CNCF distribution) on 127.0.0.1.

``registry_url`` (session): plain HTTP, no auth, a free loopback port, storage in a tmp dir.
The registry process is stopped at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTDATA = Path(__file__).resolve().parents[2] / "testdata"


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 15.0,
                  context: object | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"registry exited with {proc.returncode}: {err[-2000:]}")
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
    proc = subprocess.Popen([exe, "serve", str(config or TESTDATA / "registry.yml")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_http(f"{scheme}://127.0.0.1:{port}/v2/", proc, context=ssl_context)
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
    if proc.stderr:
        proc.stderr.close()


@pytest.fixture(scope="session")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain-HTTP registry on loopback for the whole session: '127.0.0.1:PORT'."""
    addr, proc = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield addr
    finally:
        stop(proc)
