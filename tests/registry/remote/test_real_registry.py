"""Against Debian's real docker-registry (CNCF distribution 2.8): push then pull keeps the
manifest digest over plain HTTP, TLS + htpasswd basic auth, and token auth; interop both ways
with podman and skopeo; a docker.io mirror on loopback makes `busybox` resolve offline."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from registry import mediatypes as mt
from registry.compression import decompressor
from registry.digest import Digest
from registry.imagebuild import host_arch, rfc3339, single_layer_config, store_image
from registry.layertar import TarEntry, write_layer
from registry.model import ContainerConfig, Descriptor, Manifest
from registry.remote.auth import Credentials, CredentialStore
from registry.remote.client import Remote
from registry.remote.config import RegistriesConfig
from registry.remote.errors import TLSError, Unauthorized
from registry.remote.pull import ensure_image, pull_image
from registry.remote.push import push_image
from registry.store import DirStore
from tests.support.images import BUSYBOX_EPOCH, BUSYBOX_REF, PATH_ENV, StoredImage, busybox_entries
from tests.support.registry_server import AuthRegistry
from tests.support.stores import run_cli

pytestmark = [pytest.mark.needs_registry]
REPO_ROOT = Path(__file__).resolve().parents[3]


def _digest_of_cli(out: str) -> str:
    return out.strip().splitlines()[-1]


# -- three modes -----------------------------------------------------------------------------
def test_plain_http_push_then_pull_keeps_digest(
    registry_url: str, busybox_image: StoredImage, tmp_path: Path
) -> None:
    dest = f"{registry_url}/pb/plain:1"
    push = run_cli(["push", busybox_image.ref, dest], root=busybox_image.store.root)
    assert push.code == 0, push.stderr
    assert _digest_of_cli(push.stdout) == str(busybox_image.desc.digest)
    assert push.stdout.count("\n") == 1  # stdout: only the digest
    fresh = tmp_path / "fresh"
    pull = run_cli(["pull", dest], root=fresh)
    assert pull.code == 0, pull.stderr
    assert pull.stdout.strip() == dest  # like docker's last line: the full ref
    assert f"Digest: {busybox_image.desc.digest}" in pull.stderr
    store = DirStore(fresh)
    assert store.resolve(dest).digest == busybox_image.desc.digest
    assert store.read(busybox_image.desc.digest) == busybox_image.store.read(busybox_image.desc.digest)
    again = run_cli(["pull", dest], root=fresh)
    assert "Image is up to date" in again.stderr


def test_tls_basic_auth_login_push_pull(
    registry_tls_basic: AuthRegistry, busybox_image: StoredImage, tmp_path: Path, _isolated_env: Path
) -> None:
    reg = registry_tls_basic
    certs = ["--cert-dir", str(reg.certs_d)]
    bad = run_cli(["login", *certs, "-u", reg.username, "--password-stdin", reg.addr], stdin=b"nope\n")
    assert bad.code == 1 and "nope" not in bad.stderr
    no_ca = run_cli(["login", "-u", reg.username, "--password-stdin", reg.addr], stdin=reg.password.encode())
    assert no_ca.code == 1 and "certificate verify failed" in no_ca.stderr and "ca.crt" in no_ca.stderr
    ok = run_cli(
        ["login", *certs, "-u", reg.username, "--password-stdin", reg.addr],
        stdin=reg.password.encode() + b"\n",
    )
    assert ok.code == 0, ok.stderr
    cfg = _isolated_env / ".docker" / "config.json"
    assert oct(cfg.stat().st_mode & 0o777) == "0o600"
    assert reg.addr in json.loads(cfg.read_text())["auths"]
    dest = f"{reg.addr}/secure/busybox:1"
    push = run_cli(["push", *certs, busybox_image.ref, dest], root=busybox_image.store.root)
    assert push.code == 0, push.stderr
    assert _digest_of_cli(push.stdout) == str(busybox_image.desc.digest)
    pull = run_cli(["pull", *certs, dest], root=tmp_path / "fresh")
    assert pull.code == 0, pull.stderr
    assert DirStore(tmp_path / "fresh").resolve(dest).digest == busybox_image.desc.digest
    assert reg.password not in push.stderr + pull.stderr
    out = run_cli(["logout", reg.addr])
    assert out.code == 0 and reg.addr not in json.loads(cfg.read_text())["auths"]
    denied = run_cli(["pull", *certs, dest], root=tmp_path / "fresh2")
    assert denied.code == 1 and "pybuild login" in denied.stderr


def test_tls_without_ca_is_refused(registry_tls_basic: AuthRegistry, tmp_path: Path) -> None:
    with Remote(RegistriesConfig.from_dict({})) as remote, pytest.raises(TLSError) as info:
        pull_image(DirStore(tmp_path / "s"), f"{registry_tls_basic.addr}/secure/busybox:1", remote=remote)
    assert info.value.hint and "ca.crt" in info.value.hint


def test_token_auth_push_pull_anonymous_and_get_fallback(
    registry_token: AuthRegistry, busybox_image: StoredImage, tmp_path: Path, _isolated_env: Path
) -> None:
    reg = registry_token
    ts = reg.token_server
    ok = run_cli(["login", "-u", reg.username, "--password-stdin", reg.addr], stdin=reg.password.encode())
    assert ok.code == 0, ok.stderr
    entry = json.loads((_isolated_env / ".docker" / "config.json").read_text())["auths"][reg.addr]
    assert entry.get("identitytoken") and reg.password not in json.dumps(entry)  # OAuth2 refresh token kept
    for dest in (f"{reg.addr}/team/busybox:1", f"{reg.addr}/public/busybox:1"):
        push = run_cli(["push", busybox_image.ref, dest], root=busybox_image.store.root)
        assert push.code == 0, push.stderr
        assert _digest_of_cli(push.stdout) == str(busybox_image.desc.digest)
    grants = [r.grant_type for r in ts.requests if r.method == "POST"]
    assert "refresh_token" in grants
    mount_scopes = [
        r.scopes
        for r in ts.requests
        if "repository:public/busybox:pull,push" in r.scopes and "repository:team/busybox:pull" in r.scopes
    ]
    assert mount_scopes, [r.scopes for r in ts.requests]  # cross-repo mount asked for both repositories
    fresh = DirStore(tmp_path / "fresh")
    with Remote(RegistriesConfig.from_dict({})) as remote:
        res = pull_image(fresh, f"{reg.addr}/team/busybox:1", remote=remote)
    assert res.descriptor.digest == busybox_image.desc.digest
    # anonymous: public/ is pullable, team/ is not
    anon_store = CredentialStore(tmp_path / "none.json", extra_read=[])
    with Remote(RegistriesConfig.from_dict({}), credential_store=anon_store) as remote:
        assert (
            pull_image(
                DirStore(tmp_path / "anon"), f"{reg.addr}/public/busybox:1", remote=remote
            ).descriptor.digest
            == busybox_image.desc.digest
        )
        with pytest.raises(Unauthorized):
            pull_image(DirStore(tmp_path / "anon2"), f"{reg.addr}/team/busybox:1", remote=remote)
    # GHCR-like token server: POST answers 405, the client falls back to GET with Basic
    ts.post_status = 405
    try:
        creds = {reg.addr: Credentials(reg.username, reg.password)}
        before = len(ts.requests)
        with Remote(RegistriesConfig.from_dict({}), credentials=creds) as remote:
            digest = push_image(
                busybox_image.store, busybox_image.ref, f"{reg.addr}/team/again:1", remote=remote
            ).digest
        assert digest == busybox_image.desc.digest
        methods = [r.method for r in ts.requests[before:]]
        assert methods[:2] == ["POST", "GET"] and ts.requests[before + 1].user == reg.username
    finally:
        ts.post_status = None


# -- mirrors -----------------------------------------------------------------------------------
def test_docker_io_mirror_on_loopback(
    busybox_in_registry: str, busybox_image: StoredImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = busybox_in_registry.split("/", 1)[0]
    conf = tmp_path / "registries.toml"
    conf.write_text(f'[[registry]]\nlocation = "docker.io"\n[[registry.mirror]]\nlocation = "{host}"\n')
    monkeypatch.setenv("PYBUILD_REGISTRIES_CONF", str(conf))
    res = run_cli(["pull", "-q", "busybox"], root=tmp_path / "s")
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == BUSYBOX_REF
    store = DirStore(tmp_path / "s")
    assert store.resolve(BUSYBOX_REF).digest == busybox_image.desc.digest
    # the API the builder's FROM uses: present → no registry traffic, even with a dead config
    conf.write_text('[[registry]]\nlocation = "docker.io"\nblocked = true\n')
    assert ensure_image(store, "busybox", config=RegistriesConfig.load()).digest == busybox_image.desc.digest


# -- interop: pybuild → podman / skopeo --------------------------------------------------------
@pytest.mark.needs_peer("podman", "skopeo", "runc")
def test_podman_and_skopeo_read_what_pybuild_pushed(
    registry_url: str, busybox_image: StoredImage, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    dest = f"{registry_url}/pb/interop:1"
    with Remote(RegistriesConfig.from_dict({})) as remote:
        digest = push_image(busybox_image.store, busybox_image.ref, dest, remote=remote).digest
    sk = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}", f"docker://{dest}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert sk.stdout.strip() == str(digest)
    runroot = Path(tempfile.mkdtemp(prefix="pbr-", dir="/tmp"))  # podman: runroot < 50 characters
    request.addfinalizer(lambda: shutil.rmtree(runroot, ignore_errors=True))
    podman = [
        "podman",
        "--root",
        str(tmp_path / "proot"),
        "--runroot",
        str(runroot),
        "--storage-driver",
        "vfs",
    ]
    pulled = subprocess.run(
        [*podman, "pull", "-q", "--tls-verify=false", dest], capture_output=True, text=True, timeout=120
    )
    assert pulled.returncode == 0, pulled.stderr
    insp = subprocess.run(
        [*podman, "image", "inspect", "--format", "{{.Digest}}", dest],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert insp.stdout.strip() == str(digest)
    run = subprocess.run(
        [*podman, "run", "--rm", "--network", "none", dest, "sh", "-c", "echo interop-$((6*7))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "interop-42"


# -- interop: skopeo → pybuild -----------------------------------------------------------------
def _layer_names(store: DirStore, desc: Descriptor) -> set[str]:
    manifest = Manifest.from_json(store.read(desc.digest), media_type=desc.media_type)
    names: set[str] = set()
    for layer in manifest.layers:
        with store.open(layer.digest) as raw:
            data = decompressor(io.BytesIO(raw.read()), mt.compression_of(layer.media_type)).read()  # type: ignore[arg-type]
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            names |= {m.name.lstrip("./") for m in tf.getmembers()}
    return names


def _run_pulled(store: DirStore, ref: str) -> None:
    """Run the pulled image with `pybuild run` (the sandbox helper's runtime/run.py) when present."""
    if importlib.util.find_spec("runtime.run") is None:
        return  # before the sandbox lands, the layer content check above is the proof
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "builder",
            "--root",
            str(store.root),
            "run",
            "--rm",
            "--network",
            "none",
            ref,
            "sh",
            "-c",
            "echo run-$((6*7))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "run-42"


def _two_platform_layout(tmp_path: Path) -> tuple[DirStore, str]:
    store = DirStore(tmp_path / "layout")
    layer = write_layer(busybox_entries(), store, "none")
    created = rfc3339(BUSYBOX_EPOCH)
    descs = []
    for arch in ("amd64", "arm64"):
        cfg = single_layer_config(
            layer,
            created=created,
            created_by="test",
            arch=arch,
            container=ContainerConfig(env=(PATH_ENV,), cmd=("sh",)),
        )
        d = store_image(store, cfg, [layer], tags=(f"tmp/{arch}:x",))
        descs.append(Descriptor(d.media_type, d.digest, d.size, platform=cfg.platform))
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [d.to_dict() for d in descs]}
    idesc = store.put(json.dumps(index).encode(), mt.OCI_INDEX)
    store.tag("multi:1", idesc)
    return store, "multi:1"


@pytest.mark.needs_peer("skopeo")
@pytest.mark.parametrize("variant", ["docker-v2s2", "oci-gzip", "oci-zstd", "multi-platform"])
def test_pybuild_pulls_what_skopeo_pushed(
    registry_url: str, busybox_image: StoredImage, tmp_path: Path, variant: str
) -> None:
    dest = f"{registry_url}/sk/{variant}:1"
    src = f"oci:{busybox_image.store.root}:{busybox_image.ref}"
    args = ["skopeo", "copy", "-q", "--dest-tls-verify=false"]
    if variant == "docker-v2s2":
        args += ["--format", "v2s2"]
    elif variant == "oci-zstd":
        # An uncompressed layer with unique content: skopeo compresses it to zstd (a layer it has
        # seen before would be reused as gzip through its blob-info cache).
        plain = DirStore(tmp_path / "plain")
        nonce = os.urandom(16).hex().encode()
        layer = write_layer(
            [*busybox_entries(), TarEntry("etc/nonce", "file", size=len(nonce), data=nonce)], plain, "none"
        )
        cfg = single_layer_config(layer, created=rfc3339(BUSYBOX_EPOCH), created_by="test")
        store_image(plain, cfg, [layer], tags=("zstd:1",))
        src = f"oci:{plain.root}:zstd:1"
        args += ["--dest-compress-format", "zstd"]
    elif variant == "multi-platform":
        layout, name = _two_platform_layout(tmp_path)
        src = f"oci:{layout.root}:{name}"
        args += ["--all", "--dest-compress-format", "gzip", "--dest-compress"]
    subprocess.run([*args, src, f"docker://{dest}"], check=True, capture_output=True, timeout=120)
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{dest}"],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    store = DirStore(tmp_path / "s")
    with Remote(RegistriesConfig.from_dict({})) as remote:
        res = pull_image(store, dest, remote=remote)
    assert res.repo_digest == Digest.of(raw)
    manifest = Manifest.from_json(store.read(res.descriptor.digest), media_type=res.descriptor.media_type)
    expect_type = {
        "docker-v2s2": mt.DOCKER_LAYER,
        "oci-gzip": mt.OCI_LAYER_GZIP,
        "oci-zstd": mt.OCI_LAYER_ZSTD,
        "multi-platform": mt.OCI_LAYER_GZIP,
    }[variant]
    assert [x.media_type for x in manifest.layers] == [expect_type]
    if variant == "multi-platform":
        assert json.loads(raw)["mediaType"] == mt.OCI_INDEX
        assert res.index is not None and res.descriptor.platform is not None
        assert res.descriptor.platform.architecture == host_arch()  # the host's platform by default
    names = _layer_names(store, res.descriptor)
    assert {"bin/busybox", "etc/passwd", "bin/sh"} <= names
    _run_pulled(store, res.name)


@pytest.mark.needs_peer("buildah")
def test_pybuild_pulls_what_buildah_pushed(
    registry_url: str, busybox_image: StoredImage, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    dest = f"{registry_url}/bh/busybox:1"
    runroot = Path(tempfile.mkdtemp(prefix="pbb-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(runroot, ignore_errors=True))
    base = [
        "buildah",
        "--root",
        str(tmp_path / "broot"),
        "--runroot",
        str(runroot),
        "--storage-driver",
        "vfs",
    ]
    src = f"oci:{busybox_image.store.root}:{busybox_image.ref}"
    pulled = subprocess.run([*base, "pull", "-q", src], capture_output=True, text=True, timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    image_id = pulled.stdout.strip().splitlines()[-1]
    pushed = subprocess.run(
        [*base, "push", "-q", "--tls-verify=false", "--format", "docker", image_id, f"docker://{dest}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pushed.returncode == 0, pushed.stderr
    store = DirStore(tmp_path / "s")
    with Remote(RegistriesConfig.from_dict({})) as remote:
        res = pull_image(store, dest, remote=remote)
    assert res.descriptor.media_type == mt.DOCKER_MANIFEST
    assert "bin/busybox" in _layer_names(store, res.descriptor)
    _run_pulled(store, res.name)
