"""Fixtures for the distribution-client tests: an isolated credentials/config environment, the
fake registry, and helpers that make small images (random layer bytes are enough for the
client, which never decompresses while pulling)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry import mediatypes as mt
from registry.remote.client import Remote
from registry.remote.config import RegistriesConfig
from registry.remote.transport import RetryPolicy, Transport
from tests.support.fakeregistry import FakeRegistry, fake_registry, fake_registry_factory  # noqa: F401


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No test reads or writes the user's docker/podman credentials or pybuild config."""
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text("{}")  # podman/skopeo insist the file exists
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("PYBUILD_REGISTRIES_CONF", raising=False)
    monkeypatch.delenv("PYBUILD_CERTS_D", raising=False)
    yield home


def fast_remote(config: RegistriesConfig | None = None, **kw: object) -> Remote:
    """A Remote whose retries wait milliseconds (the policy is what is under test, not the clock)."""
    cfg = config or RegistriesConfig.from_dict({})
    transport = Transport(cfg, retry=RetryPolicy(base_delay=0.01, max_delay=0.05))
    return Remote(cfg, transport=transport, **kw)  # type: ignore[arg-type]


@dataclass
class FakeImage:
    manifest: bytes
    digest: str
    config: str
    layers: list[str]
    layer_data: list[bytes]


def make_image(
    reg: FakeRegistry,
    repo: str,
    tag: str = "latest",
    *,
    layer_sizes: tuple[int, ...] = (200_000,),
    arch: str = "amd64",
    media_type: str = mt.OCI_MANIFEST,
    urls: dict[int, list[str]] | None = None,
    put_layers: bool = True,
) -> FakeImage:
    layers, datas = [], []
    for i, n in enumerate(layer_sizes):
        data = os.urandom(n)
        datas.append(data)
        if put_layers:
            reg.add_blob(repo, data)
        else:
            reg.blobs["sha256:" + hashlib.sha256(data).hexdigest()] = data
        layers.append("sha256:" + hashlib.sha256(data).hexdigest())
        del i
    diff_ids = [f"sha256:{hashlib.sha256(str(i).encode()).hexdigest()}" for i in range(len(layers))]
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {"Cmd": ["sh"]},
        }
    ).encode()
    cdigest = reg.add_blob(repo, config)
    ltype = mt.OCI_LAYER_GZIP if media_type == mt.OCI_MANIFEST else mt.DOCKER_LAYER
    ctype = mt.OCI_CONFIG if media_type == mt.OCI_MANIFEST else mt.DOCKER_CONFIG
    ldescs = []
    for i, (d, data) in enumerate(zip(layers, datas, strict=True)):
        desc: dict[str, object] = {"mediaType": ltype, "digest": d, "size": len(data)}
        if urls and i in urls:
            desc["urls"] = urls[i]
            desc["mediaType"] = mt.DOCKER_FOREIGN_LAYER
        ldescs.append(desc)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": ctype, "digest": cdigest, "size": len(config)},
            "layers": ldescs,
        },
        indent=2,
    ).encode()
    digest = reg.add_manifest(repo, tag, manifest, media_type)
    return FakeImage(manifest, digest, cdigest, layers, datas)
