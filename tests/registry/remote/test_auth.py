"""Authentication, credentials and transport rules, with `responses` standing in for Docker Hub
and GHCR (their documented token flows: distribution's token and OAuth2 specs, Docker Hub's
rate-limit headers, GHCR's /token realm)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from registry import mediatypes as mt
from registry.remote.auth import (
    DOCKER_HUB_KEY,
    Credentials,
    CredentialStore,
    merge_scopes,
    parse_challenges,
    repo_scope,
)
from registry.remote.config import RegistriesConfig, is_loopback
from registry.remote.errors import RedirectError, Unauthorized, redact
from registry.remote.progress import Event
from registry.remote.pull import pull_image
from registry.remote.push import push_image
from registry.remote.transport import parse_retry_after
from registry.store import DirStore
from tests.registry.remote.conftest import fast_remote

HUB = "https://registry-1.docker.io"
HUB_AUTH = "https://auth.docker.io/token"
HUB_CHALLENGE = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io"'
GHCR = "https://ghcr.io"


# -- parsing -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header,expected",
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:samalba/my-app:pull,push"',
            [
                (
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:samalba/my-app:pull,push",
                    },
                )
            ],
        ),
        (
            "Bearer realm=https://r.example/token,service=r.example",
            [("bearer", {"realm": "https://r.example/token", "service": "r.example"})],
        ),
        ('Bearer realm="https://ghcr.io/token"', [("bearer", {"realm": "https://ghcr.io/token"})]),
        ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
        (
            'Basic realm="a, b", Bearer realm="https://t/x" , service="s\\"q"',
            [("basic", {"realm": "a, b"}), ("bearer", {"realm": "https://t/x", "service": 's"q'})],
        ),
        ('BEARER Realm="https://x/t"', [("bearer", {"realm": "https://x/t"})]),
    ],
)
def test_parse_challenges(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    got = [(c.scheme, dict(c.params)) for c in parse_challenges(header)]
    assert got == expected


def test_scopes() -> None:
    assert repo_scope("me/app", ["push", "pull"]) == "repository:me/app:pull,push"
    assert merge_scopes(
        ["repository:me/app:pull,push", "repository:me/app:pull", "repository:library/busybox:pull", ""]
    ) == ["repository:me/app:pull,push", "repository:library/busybox:pull"]


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    now = 1_700_000_000.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:30 GMT", now=now) == pytest.approx(10.0)
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now=now + 100) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_redact_and_credentials_repr() -> None:
    url = "https://user:pw@s3.example/blob?X-Amz-Signature=abc&token=t&keep=1"
    out = redact(url)
    assert "pw" not in out and "abc" not in out and "=t&" not in out and "keep=1" in out
    c = Credentials("me", "hunter2", "idtok")
    assert "hunter2" not in repr(c) and "idtok" not in str(c)


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1:5000") and is_loopback("127.1.2.3") and is_loopback("localhost:80")
    assert is_loopback("[::1]:5000") and not is_loopback("10.0.0.1:5000") and not is_loopback("example.com")


# -- credentials files -------------------------------------------------------------------
def test_docker_config_lookup_and_write(_isolated_env: Path) -> None:
    cfgfile = _isolated_env / ".docker" / "config.json"
    cfgfile.write_text(
        json.dumps(
            {
                "auths": {
                    DOCKER_HUB_KEY: {"auth": base64.b64encode(b"hubuser:hubpass").decode()},
                    "https://quay.example/v1/": {"auth": base64.b64encode(b"q:w").decode()},
                    "reg.example:5000": {
                        "auth": base64.b64encode(b"u:").decode(),
                        "identitytoken": "refresh-1",
                    },
                },
                "HttpHeaders": {"X-Keep": "1"},
            }
        )
    )
    store = CredentialStore()
    hub = store.get("registry-1.docker.io")
    assert hub is not None and (hub.username, hub.password) == ("hubuser", "hubpass")
    assert store.get("quay.example") == Credentials("q", "w")
    assert store.get("reg.example:5000") == Credentials("u", "", "refresh-1")
    assert store.get("other.example") is None
    store.save("ghcr.io", Credentials("gh", "pat-123"))
    assert stat.S_IMODE(cfgfile.stat().st_mode) == 0o600
    doc = json.loads(cfgfile.read_text())
    assert doc["HttpHeaders"] == {"X-Keep": "1"}  # other keys preserved
    assert base64.b64decode(doc["auths"]["ghcr.io"]["auth"]) == b"gh:pat-123"
    assert (
        store.erase("registry-1.docker.io") and DOCKER_HUB_KEY not in json.loads(cfgfile.read_text())["auths"]
    )
    assert not store.erase("never.example")


def test_containers_auth_json_is_read(_isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = _isolated_env / "run"
    (runtime / "containers").mkdir(parents=True)
    (runtime / "containers" / "auth.json").write_text(
        json.dumps(
            {
                "auths": {
                    "quay.example/team": {"auth": base64.b64encode(b"team:t").decode()},
                    "quay.example": {"auth": base64.b64encode(b"all:a").decode()},
                }
            }
        )
    )
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    store = CredentialStore()
    assert store.get("quay.example", "team/app") == Credentials("team", "t")
    assert store.get("quay.example", "other/app") == Credentials("all", "a")


def test_credential_helpers(_isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = _isolated_env / "bin"
    bindir.mkdir()
    log = _isolated_env / "helper.log"
    helper = bindir / "docker-credential-fake"
    helper.write_text(f"""#!/bin/sh
read server
echo "$1 $server" >> {log}
case "$1" in
  get) case "$server" in
         ghcr.io) echo '{{"ServerURL":"ghcr.io","Username":"<token>","Secret":"refresh-abc"}}';;
         reg.example) echo '{{"ServerURL":"reg.example","Username":"bob","Secret":"pw"}}';;
         *) echo "credentials not found in native keychain"; exit 1;;
       esac;;
  store|erase) exit 0;;
esac
""")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    cfg = _isolated_env / ".docker" / "config.json"
    cfg.write_text(json.dumps({"credsStore": "fake", "credHelpers": {"ghcr.io": "fake"}}))
    store = CredentialStore()
    assert store.get("ghcr.io") == Credentials(identity_token="refresh-abc")
    assert store.get("reg.example") == Credentials("bob", "pw")
    assert store.get("nothing.example") is None
    where = store.save("reg.example", Credentials("bob", "pw2"))
    assert "docker-credential-fake" in where
    assert "pw2" not in cfg.read_text()
    assert "store" in log.read_text()


# -- transport rules ---------------------------------------------------------------------
@responses.activate
def test_redirect_rules() -> None:
    responses.add(
        responses.GET,
        "https://reg.example/v2/a/blobs/x1",
        status=307,
        headers={"Location": "http://cdn.example/x1"},
    )
    responses.add(
        responses.GET,
        "https://reg.example/v2/a/blobs/x2",
        status=302,
        headers={"Location": "/v2/a/blobs/x2b"},
    )
    responses.add(
        responses.GET,
        "https://reg.example/v2/a/blobs/x2b",
        status=307,
        headers={"Location": "https://reg.example:8443/x2c"},
    )
    responses.add(responses.GET, "https://reg.example:8443/x2c", body=b"ok")
    responses.add(responses.GET, "https://reg.example/loop", status=302, headers={"Location": "/loop"})
    responses.add(
        responses.GET, "https://reg.example/file", status=302, headers={"Location": "file:///etc/passwd"}
    )
    with fast_remote() as remote:
        t = remote.transport
        with pytest.raises(RedirectError, match="https to http"):
            t.request("GET", "https://reg.example/v2/a/blobs/x1", headers={"Authorization": "Bearer s"})
        resp = t.request("GET", "https://reg.example/v2/a/blobs/x2", headers={"Authorization": "Bearer s"})
        assert resp.status_code == 200
        with pytest.raises(RedirectError, match="more than 10"):
            t.request("GET", "https://reg.example/loop")
        with pytest.raises(RedirectError, match="file"):
            t.request("GET", "https://reg.example/file")
    sent = {
        urlsplit(c.request.url).netloc + urlsplit(c.request.url).path: c.request.headers.get("Authorization")
        for c in responses.calls
    }
    assert sent["reg.example/v2/a/blobs/x2b"] == "Bearer s"  # same origin: kept
    assert sent["reg.example:8443/x2c"] is None  # port changed: dropped
    assert all(c.request.headers.get("Accept-Encoding") == "identity" for c in responses.calls)
    assert len([c for c in responses.calls if c.request.url.endswith("/loop")]) == 11


# -- Docker Hub ---------------------------------------------------------------------------
def _hub_image() -> tuple[bytes, bytes, bytes]:
    layer = b"layer-bytes" * 1000
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.DOCKER_MANIFEST,
            "config": {
                "mediaType": mt.DOCKER_CONFIG,
                "size": len(config),
                "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
            },
            "layers": [
                {
                    "mediaType": mt.DOCKER_LAYER,
                    "size": len(layer),
                    "digest": "sha256:" + hashlib.sha256(layer).hexdigest(),
                }
            ],
        }
    ).encode()
    return manifest, config, layer


def _add_hub_repo(repo: str, manifest: bytes, config: bytes, layer: bytes, *, remaining: int = 76) -> None:
    def need_token(request):  # type: ignore[no-untyped-def]
        if request.headers.get("Authorization") != "Bearer hub-token":
            return (
                401,
                {"WWW-Authenticate": f'{HUB_CHALLENGE},scope="repository:{repo}:pull"'},
                b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
            )
        return None

    def manifest_cb(request):  # type: ignore[no-untyped-def]
        denied = need_token(request)
        if denied:
            return denied
        return (
            200,
            {
                "Content-Type": mt.DOCKER_MANIFEST,
                "ratelimit-limit": "100;w=21600",
                "ratelimit-remaining": f"{remaining};w=21600",
                "docker-ratelimit-source": "1.2.3.4",
                "Docker-Content-Digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
            },
            manifest,
        )

    responses.add_callback(responses.GET, f"{HUB}/v2/{repo}/manifests/latest", callback=manifest_cb)
    for blob in (config, layer):
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        responses.add_callback(
            responses.GET,
            f"{HUB}/v2/{repo}/blobs/{digest}",
            callback=lambda r, d=digest: (
                need_token(r) or (307, {"Location": f"https://production.cdn.example/{d}?sig=s3cr3t"}, b"")
            ),
        )
        responses.add(
            responses.GET,
            f"https://production.cdn.example/{digest}",
            body=blob,
            match=[responses.matchers.query_param_matcher({"sig": "s3cr3t"})],
        )


@responses.activate
def test_docker_hub_anonymous_pull_library_and_rate_limit_warning(tmp_path: Path) -> None:
    manifest, config, layer = _hub_image()
    _add_hub_repo("library/busybox", manifest, config, layer, remaining=3)
    responses.add(
        responses.GET,
        HUB_AUTH,
        json={
            "token": "hub-token",
            "access_token": "hub-token",
            "expires_in": 300,
            "issued_at": "2024-01-01T00:00:00Z",
        },
        match=[
            responses.matchers.query_param_matcher(
                {"service": "registry.docker.io", "scope": "repository:library/busybox:pull"}
            )
        ],
    )
    events: list[Event] = []
    store = DirStore(tmp_path / "s")
    with fast_remote(notify=lambda m: events.append(Event("warning", note=m))) as remote:
        res = pull_image(store, "busybox", remote=remote, progress=events.append)
    assert res.name == "docker.io/library/busybox:latest"
    assert str(res.descriptor.digest) == "sha256:" + hashlib.sha256(manifest).hexdigest()
    token_calls = [c for c in responses.calls if c.request.url.startswith(HUB_AUTH)]
    assert len(token_calls) == 1 and "Authorization" not in token_calls[0].request.headers
    cdn = [c for c in responses.calls if "cdn.example" in c.request.url]
    assert len(cdn) == 2 and all("Authorization" not in c.request.headers for c in cdn)
    warnings = [e.note for e in events if e.kind == "warning"]
    assert warnings and "only 3 pulls left of 100 per 6h" in warnings[0]


@responses.activate
def test_docker_hub_stored_credentials_pat_and_anonymous_fallback(
    _isolated_env: Path, tmp_path: Path
) -> None:
    manifest, config, layer = _hub_image()
    _add_hub_repo("library/busybox", manifest, config, layer)
    (_isolated_env / ".docker" / "config.json").write_text(
        json.dumps({"auths": {DOCKER_HUB_KEY: {"auth": base64.b64encode(b"me:revoked-pat").decode()}}})
    )
    responses.add(responses.POST, HUB_AUTH, status=401, json={"error": "invalid_grant"})

    def get_token(request):  # type: ignore[no-untyped-def]
        if "Authorization" in request.headers:
            return (401, {}, b'{"details":"incorrect username or password"}')
        return (200, {}, json.dumps({"token": "hub-token"}).encode())

    responses.add_callback(responses.GET, HUB_AUTH, callback=get_token)
    res = pull_image(DirStore(tmp_path / "s"), "docker.io/library/busybox", remote=fast_remote())
    assert res.descriptor.digest
    calls = [c for c in responses.calls if c.request.url.startswith(HUB_AUTH)]
    post = calls[0]
    assert post.request.method == "POST"
    form = parse_qs(post.request.body.decode() if isinstance(post.request.body, bytes) else post.request.body)
    assert form["grant_type"] == ["password"] and form["username"] == ["me"]
    assert form["service"] == ["registry.docker.io"] and form["scope"] == ["repository:library/busybox:pull"]
    assert (
        calls[1].request.headers["Authorization"] == "Basic " + base64.b64encode(b"me:revoked-pat").decode()
    )
    assert "Authorization" not in calls[-1].request.headers  # the anonymous retry


@responses.activate
def test_docker_hub_push_scopes_include_the_mount_source(_isolated_env: Path, busybox_store) -> None:  # type: ignore[no-untyped-def]
    """Pushing me/app with a mount from library/busybox asks one token for both repositories."""
    store = busybox_store.store
    from registry.remote.blobinfo import BlobInfoCache
    from registry.remote.pull import load_manifest

    m = load_manifest(store, busybox_store.desc)
    cache = BlobInfoCache(store)
    cache.record([m.layers[0].digest], "registry-1.docker.io", "library/busybox")
    cache.flush()
    (_isolated_env / ".docker" / "config.json").write_text(
        json.dumps({"auths": {DOCKER_HUB_KEY: {"auth": base64.b64encode(b"me:dckr_pat_x").decode()}}})
    )
    scopes_seen: list[list[str]] = []

    def token(request):  # type: ignore[no-untyped-def]
        form = parse_qs(request.body if isinstance(request.body, str) else request.body.decode())
        scopes_seen.append(form.get("scope", [""])[0].split(" "))
        assert form["username"] == ["me"] and form["password"] == ["dckr_pat_x"]
        return (200, {}, json.dumps({"access_token": "push-token", "expires_in": 900, "scope": ""}).encode())

    responses.add_callback(responses.POST, HUB_AUTH, callback=token)

    def authed(status, headers=None):  # type: ignore[no-untyped-def]
        def cb(request):  # type: ignore[no-untyped-def]
            if request.headers.get("Authorization") != "Bearer push-token":
                scope = "repository:me/app:pull,push"
                if "mount=" in request.url:
                    scope += " repository:library/busybox:pull"
                return (401, {"WWW-Authenticate": f'{HUB_CHALLENGE},scope="{scope}"'}, b"")
            return (status, headers or {}, b"")

        return cb

    for d in (m.config.digest, m.layers[0].digest):
        responses.add_callback(responses.HEAD, f"{HUB}/v2/me/app/blobs/{d}", callback=authed(404))
    mount_cb, upload_cb = (
        authed(201, {"Location": "/v2/me/app/blobs/x"}),
        authed(202, {"Location": "/v2/me/app/blobs/uploads/u1"}),
    )
    responses.add_callback(
        responses.POST,
        f"{HUB}/v2/me/app/blobs/uploads/",
        callback=lambda r: mount_cb(r) if "mount=" in r.url else upload_cb(r),
    )
    responses.add_callback(responses.PUT, f"{HUB}/v2/me/app/blobs/uploads/u1", callback=authed(201))
    responses.add_callback(responses.PUT, f"{HUB}/v2/me/app/manifests/1", callback=authed(201))
    digest = push_image(store, busybox_store.ref, "me/app:1", remote=fast_remote(), jobs=1).digest
    assert digest == busybox_store.desc.digest
    assert ["repository:me/app:pull,push", "repository:library/busybox:pull"] in scopes_seen
    posts = [c for c in responses.calls if c.request.method == "POST" and "/blobs/uploads/" in c.request.url]
    assert any("mount=" in c.request.url and "from=library/busybox" in c.request.url for c in posts)


# -- GHCR ---------------------------------------------------------------------------------
@responses.activate
def test_ghcr_login_with_pat_falls_back_to_get_on_405(_isolated_env: Path) -> None:
    from tests.support.stores import run_cli

    def v2(request):  # type: ignore[no-untyped-def]
        if request.headers.get("Authorization") == "Bearer gh-token":
            return (200, {}, b"{}")
        return (
            401,
            {
                "WWW-Authenticate": 'Bearer realm="https://ghcr.io/token",service="ghcr.io",'
                'scope="repository:user/image:pull"'
            },
            b"",
        )

    responses.add_callback(responses.GET, f"{GHCR}/v2/", callback=v2)
    responses.add(responses.POST, f"{GHCR}/token", status=405)
    good = "Basic " + base64.b64encode(b"octo:ghp_secretPAT").decode()
    responses.add_callback(
        responses.GET,
        f"{GHCR}/token",
        callback=lambda r: (
            (200, {}, b'{"token":"gh-token"}') if r.headers.get("Authorization") == good else (401, {}, b"{}")
        ),
    )
    res = run_cli(["login", "ghcr.io", "-u", "octo", "--password-stdin"], stdin=b"ghp_secretPAT\n")
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == "Login Succeeded" and "ghp_secretPAT" not in res.stdout + res.stderr
    cfg = _isolated_env / ".docker" / "config.json"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert base64.b64decode(json.loads(cfg.read_text())["auths"]["ghcr.io"]["auth"]) == b"octo:ghp_secretPAT"
    methods = [(c.request.method, urlsplit(c.request.url).path) for c in responses.calls]
    assert ("POST", "/token") in methods and methods.index(("POST", "/token")) < methods.index(
        ("GET", "/token")
    )
    bad = run_cli(["login", "ghcr.io", "-u", "octo", "--password-stdin"], stdin=b"wrong\n")
    assert bad.code == 1 and "rejected" in bad.stderr and "wrong" not in bad.stderr
    assert b"wrong" not in cfg.read_bytes()


@responses.activate
def test_ghcr_anonymous_pull_token(tmp_path: Path) -> None:
    manifest, config, layer = _hub_image()
    repo = "octo/tool"

    def gate(request, status, body, headers):  # type: ignore[no-untyped-def]
        if request.headers.get("Authorization") != "Bearer anon":
            return (
                401,
                {
                    "WWW-Authenticate": f'Bearer realm="https://ghcr.io/token",service="ghcr.io",'
                    f'scope="repository:{repo}:pull"'
                },
                b"",
            )
        return (status, headers, body)

    responses.add_callback(
        responses.GET,
        f"{GHCR}/v2/{repo}/manifests/v1",
        callback=lambda r: gate(r, 200, manifest, {"Content-Type": mt.DOCKER_MANIFEST}),
    )
    for blob in (config, layer):
        d = "sha256:" + hashlib.sha256(blob).hexdigest()
        responses.add_callback(
            responses.GET, f"{GHCR}/v2/{repo}/blobs/{d}", callback=lambda r, b=blob: gate(r, 200, b, {})
        )
    responses.add(
        responses.GET,
        f"{GHCR}/token",
        json={"token": "anon"},
        match=[
            responses.matchers.query_param_matcher({"scope": f"repository:{repo}:pull", "service": "ghcr.io"})
        ],
    )
    res = pull_image(DirStore(tmp_path / "s"), f"ghcr.io/{repo}:v1", remote=fast_remote())
    assert res.name == f"ghcr.io/{repo}:v1"
    assert len([c for c in responses.calls if c.request.url.startswith(f"{GHCR}/token")]) == 1


def test_ghcr_names_must_be_lowercase() -> None:
    from registry.errors import InvalidReference
    from registry.reference import parse_reference

    with pytest.raises(InvalidReference, match="lowercase"):
        parse_reference("ghcr.io/Octo/Tool:v1")


@responses.activate
def test_token_cache_reuses_tokens_until_expiry(tmp_path: Path) -> None:
    manifest, config, layer = _hub_image()
    _add_hub_repo("library/busybox", manifest, config, layer)
    responses.add(responses.GET, HUB_AUTH, json={"token": "hub-token", "expires_in": 300})
    with fast_remote() as remote:
        pull_image(DirStore(tmp_path / "a"), "busybox", remote=remote)
        t0 = time.monotonic()
        pull_image(DirStore(tmp_path / "b"), "busybox", remote=remote)
        assert time.monotonic() - t0 < 5
    assert len([c for c in responses.calls if c.request.url.startswith(HUB_AUTH)]) == 1


@responses.activate
def test_bad_credentials_for_push_fail_with_login_hint(_isolated_env: Path, busybox_store) -> None:  # type: ignore[no-untyped-def]
    (_isolated_env / ".docker" / "config.json").write_text(
        json.dumps({"auths": {"reg.example": {"auth": base64.b64encode(b"me:wrong").decode()}}})
    )
    responses.add(
        responses.HEAD,
        re.compile(r"https://reg\.example/v2/me/app/blobs/.*"),
        status=401,
        headers={"WWW-Authenticate": 'Basic realm="r"'},
    )
    with pytest.raises(Unauthorized) as info:
        push_image(
            busybox_store.store,
            busybox_store.ref,
            "reg.example/me/app:1",
            remote=fast_remote(),
            jobs=1,
            config=RegistriesConfig.from_dict({}),
        )
    assert info.value.hint and "pybuild login" in info.value.hint
    assert "wrong" not in str(info.value)
