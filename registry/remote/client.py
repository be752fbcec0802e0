"""RegistryClient / RepositoryClient: the distribution API calls (manifests, blobs, uploads, cross-repo
mounts, tags) with authentication and error classification around the transport. A call returns what
the API promises or raises a RemoteError naming method, redacted URL, status and diagnostics; a 401
re-authenticates once (mid-upload too), pulls fall back to anonymous when stored credentials are
refused. Imports requests and registry."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin

import requests

from registry import mediatypes as mt
from registry.digest import Digest
from registry.remote.auth import Authenticator, Credentials, CredentialStore, repo_scope
from registry.remote.config import DOCKER_HUB_API, RegistriesConfig
from registry.remote.errors import ManifestError, NotFound, RegistryHTTPError, Unauthorized, UploadError
from registry.remote.transport import Body, Transport

log = logging.getLogger("pybuild." + __name__)

MAX_MANIFEST = 4 << 20
RATE_LIMIT_WARN = 10  # warn when Docker Hub says fewer pulls than this are left
MANIFEST_ACCEPT = ", ".join((*mt.MANIFEST_ACCEPT, mt.DOCKER_SCHEMA1_SIGNED, mt.DOCKER_SCHEMA1))


@dataclass(frozen=True, slots=True)
class ManifestResponse:
    """A manifest as the registry sent it, with the digest of those bytes."""

    raw: bytes
    media_type: str  # from Content-Type (the body's own mediaType is checked by callers)
    digest: Digest  # computed over raw
    header_digest: str | None


def _read_capped(resp: requests.Response, limit: int) -> bytes:
    data = resp.raw.read(limit + 1, decode_content=False)
    return data


class RegistryClient:
    """One registry host: base URL discovery, authentication, error mapping."""

    def __init__(
        self,
        host: str,
        transport: Transport,
        auth: Authenticator,
        *,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self.transport = transport
        self.auth = auth
        self.notify = notify or (lambda msg: log.warning("%s", msg))
        self._warned_rate = False

    @property
    def base(self) -> str:
        return self.transport.base_url(self.host)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def repository(self, name: str, *, push: bool = False) -> RepositoryClient:
        return RepositoryClient(self, name, push=push)

    def request(
        self,
        method: str,
        url: str,
        *,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        retry: bool = True,
        pull_only: bool = False,
        what: str = "",
    ) -> requests.Response:
        """Send with authentication; returns the response (any status but 401)."""
        hdrs = dict(headers or {})
        sent_auth = self.auth.header(self.host, scopes)
        if sent_auth:
            hdrs["Authorization"] = sent_auth
        resp = self.transport.request(
            method,
            url,
            headers=hdrs,
            body=body,
            retry=retry,
            on_retry=lambda why: log.info("retrying: %s", why),
        )
        if resp.status_code != 401:
            self._check_rate_limit(resp)
            return resp
        www = resp.headers.get("WWW-Authenticate", "")
        first_body = _drain(resp)
        rereadable = body is None or isinstance(body, bytes) or callable(body)
        if not www or not rereadable:
            raise Unauthorized(method, url, 401, first_body, what=what)
        if sent_auth:
            self.auth.forget(self.host, sent_auth)  # an expired token (e.g. in the middle of an upload)
        anonymous = False
        try:
            new = self.auth.challenge(self.host, www, scopes, sent=sent_auth)
        except Unauthorized:
            if not pull_only or self.auth.credentials(self.host) is None:
                raise
            log.info("%s: stored credentials rejected; retrying anonymously", self.host)
            new = self.auth.challenge(self.host, www, scopes, anonymous=True)
            anonymous = True
        if new is None:
            raise Unauthorized(method, url, 401, first_body, what=what)
        hdrs["Authorization"] = new
        resp = self.transport.request(method, url, headers=hdrs, body=body, retry=retry)
        if (
            resp.status_code in (401, 403)
            and pull_only
            and not anonymous
            and new.startswith("Bearer")
            and self.auth.credentials(self.host) is not None
        ):
            # Credentials accepted by the token server but refused by the registry for a pull:
            # public images still work anonymously (docker does the same).
            www = resp.headers.get("WWW-Authenticate", www)
            _drain(resp)
            anon = self.auth.challenge(self.host, www, scopes, anonymous=True)
            if anon is not None:
                hdrs["Authorization"] = anon
            else:
                hdrs.pop("Authorization", None)
            resp = self.transport.request(method, url, headers=hdrs, body=body, retry=retry)
        if resp.status_code == 401:
            raise Unauthorized(method, url, 401, _drain(resp), what=what)
        self._check_rate_limit(resp)
        return resp

    def _check_rate_limit(self, resp: requests.Response) -> None:
        value = resp.headers.get("RateLimit-Remaining")
        if value is None or self._warned_rate:
            return
        remaining, _, window = value.partition(";")
        try:
            left = int(remaining.strip())
        except ValueError:
            return
        if left < RATE_LIMIT_WARN:
            self._warned_rate = True
            limit = resp.headers.get("RateLimit-Limit", "").partition(";")[0].strip()
            secs = window.strip().removeprefix("w=")
            per = f" per {int(secs) // 3600}h" if secs.isdigit() and int(secs) >= 3600 else ""
            of = f" of {limit}{per}" if limit else ""
            self.notify(
                f"{self.host}: only {left} pulls left{of} (RateLimit-Remaining); "
                "log in (`pybuild login`) for a higher limit"
            )

    def ping(self, *, scopes: Sequence[str] = ()) -> int:
        """GET /v2/ with authentication (what `login` uses to verify credentials)."""
        resp = self.request("GET", self.url("/v2/"), scopes=scopes, what=f"log in to {self.host}")
        with contextlib.closing(resp):
            body = _drain(resp)
            if resp.status_code != 200:
                raise RegistryHTTPError("GET", resp.url, resp.status_code, body, what=f"ping {self.host}")
        return resp.status_code


def _drain(resp: requests.Response, limit: int = 64 * 1024) -> bytes:
    """Read (up to ``limit`` bytes of) the body and close. A body read to its end hands the
    connection back to the pool (a HEAD answer ends at once), so the next request reuses it."""
    try:
        data = resp.raw.read(limit, decode_content=True)
    except Exception:  # noqa: BLE001 - an error body that cannot be read is just empty
        data = b""
    resp.close()
    return bytes(data or b"") if resp.request.method != "HEAD" else b""


def _with_digest(location: str, digest: Digest) -> str:
    sep = "&" if "?" in location else "?"
    return f"{location}{sep}digest={quote(str(digest), safe=':')}"


class RepositoryClient:
    """One repository on one registry."""

    def __init__(self, registry: RegistryClient, name: str, *, push: bool = False) -> None:
        self.registry = registry
        self.name = name
        self.push = push
        self.scopes = [repo_scope(name, ("pull", "push") if push else ("pull",))]

    def __str__(self) -> str:
        host = "docker.io" if self.registry.host == DOCKER_HUB_API else self.registry.host
        return f"{host}/{self.name}"

    def _url(self, kind: str, ref: str) -> str:
        return self.registry.url(f"/v2/{self.name}/{kind}/{ref}")

    def _req(
        self, method: str, url: str, *, scopes: Sequence[str] | None = None, **kw: Any
    ) -> requests.Response:
        return self.registry.request(method, url, scopes=scopes or self.scopes, pull_only=not self.push, **kw)

    def _fail(self, resp: requests.Response, what: str) -> RegistryHTTPError:
        body = _drain(resp)
        method = resp.request.method or "?"
        cls = (
            NotFound
            if resp.status_code == 404
            else (Unauthorized if resp.status_code in (401, 403) else RegistryHTTPError)
        )
        return cls(method, resp.url, resp.status_code, body, what=what)

    # manifests ---------------------------------------------------------------------------
    def get_manifest(self, reference: str, *, limit: int = MAX_MANIFEST) -> ManifestResponse:
        url = self._url("manifests", reference)
        resp = self._req("GET", url, headers={"Accept": MANIFEST_ACCEPT})
        with contextlib.closing(resp):
            if resp.status_code != 200:
                raise self._fail(
                    resp,
                    f"manifest {self}:{reference}"
                    if ":" not in reference
                    else f"manifest {self}@{reference}",
                )
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limit:
                raise ManifestError(
                    f"manifest {self}:{reference}: {length} bytes, over the {limit}-byte limit"
                )
            raw = _read_capped(resp, limit)
            if len(raw) > limit:
                raise ManifestError(f"manifest {self}:{reference}: larger than the {limit}-byte limit")
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
            return ManifestResponse(raw, ctype, Digest.of(raw), resp.headers.get("Docker-Content-Digest"))

    def put_manifest(self, reference: str, raw: bytes, media_type: str) -> Digest:
        url = self._url("manifests", reference)
        resp = self._req("PUT", url, headers={"Content-Type": media_type}, body=raw)
        with contextlib.closing(resp):
            if resp.status_code not in (200, 201, 202):
                raise self._fail(resp, f"push manifest {self}:{reference}")
            digest = Digest.of(raw)
            got = resp.headers.get("Docker-Content-Digest")
            if got and got != str(digest):
                raise UploadError(
                    f"push manifest {self}:{reference}: registry computed {got}, expected {digest}"
                )
            _drain(resp)
            return digest

    def tags(self) -> list[str]:
        resp = self._req("GET", self.registry.url(f"/v2/{self.name}/tags/list"))
        with contextlib.closing(resp):
            if resp.status_code != 200:
                raise self._fail(resp, f"tags of {self}")
            doc = json.loads(_read_capped(resp, MAX_MANIFEST))
            return list(doc.get("tags") or [])

    # blobs -------------------------------------------------------------------------------
    def head_blob(self, digest: Digest) -> int | None:
        """The blob's size if the repository has it, else None."""
        resp = self._req("HEAD", self._url("blobs", str(digest)))
        if resp.status_code not in (200, 404):
            raise self._fail(resp, f"blob {digest} in {self}")
        _drain(resp)
        if resp.status_code == 404:
            return None
        return int(resp.headers.get("Content-Length", "-1") or -1)

    @contextlib.contextmanager
    def open_blob(
        self, digest: Digest, *, offset: int = 0, url: str | None = None
    ) -> Iterator[requests.Response]:
        """GET a blob (``Range: bytes=offset-`` when resuming); 200 or 206, body unread."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        target = url or self._url("blobs", str(digest))
        if url is not None:
            resp = self.registry.transport.request("GET", target, headers=headers)
        else:
            resp = self._req("GET", target, headers=headers)
        try:
            if resp.status_code == 416 and offset:
                # The range is past the end: we already have everything (let the caller verify).
                yield resp
                return
            if resp.status_code not in (200, 206):
                raise self._fail(resp, f"blob {digest} in {self}")
            yield resp
        finally:
            resp.close()

    # uploads -----------------------------------------------------------------------------
    def start_upload(
        self, *, mount: Digest | None = None, from_repo: str | None = None
    ) -> tuple[int, str, dict[str, str]]:
        """POST blobs/uploads/: (201, location, headers) when mounted, else (202, location, headers)."""
        path = f"/v2/{self.name}/blobs/uploads/"
        scopes = list(self.scopes)
        if mount is not None and from_repo:
            path += f"?mount={quote(str(mount), safe=':')}&from={quote(from_repo, safe='/')}"
            scopes.append(repo_scope(from_repo, ("pull",)))
        url = self.registry.url(path)
        resp = self.registry.request("POST", url, scopes=scopes, headers={"Content-Length": "0"}, body=b"")
        with contextlib.closing(resp):
            if resp.status_code not in (201, 202):
                raise self._fail(resp, f"start upload to {self}")
            location = resp.headers.get("Location")
            if not location:
                raise UploadError(f"start upload to {self}: no Location in the answer")
            headers = {k: v for k, v in resp.headers.items()}
            _drain(resp)
            return resp.status_code, urljoin(resp.url, location), headers

    def upload_status(self, location: str) -> tuple[str, int]:
        """GET the upload session: (location, bytes received). NotFound if the session is gone."""
        resp = self._req("GET", location)
        with contextlib.closing(resp):
            if resp.status_code not in (200, 204):
                raise self._fail(resp, f"upload status in {self}")
            rng = resp.headers.get("Range", "")
            new_loc = urljoin(resp.url, resp.headers.get("Location", location))
            _drain(resp)
            return new_loc, range_end(rng)

    def patch(self, location: str, body: Body, start: int, length: int) -> requests.Response:
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(length),
            "Content-Range": f"{start}-{start + length - 1}",
        }
        return self._req("PATCH", location, headers=headers, body=body, retry=False)

    def finish_upload(
        self, location: str, digest: Digest, body: Body = None, size: int = 0
    ) -> requests.Response:
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size if body else 0)}
        return self._req(
            "PUT",
            _with_digest(location, digest),
            headers=headers,
            body=body if body is not None else b"",
            retry=False,
        )

    def fail(self, resp: requests.Response, what: str) -> RegistryHTTPError:
        return self._fail(resp, what)


def range_end(value: str) -> int:
    """Bytes received from an upload-status Range header ('0-1023' → 1024; missing → 0)."""
    value = value.strip().removeprefix("bytes=").removeprefix("bytes ")
    if "-" not in value or value == "0-0":
        # distribution answers "0-0" for an empty session (an inclusive range cannot say 0)
        return 0
    _, _, end = value.partition("-")
    try:
        last = int(end)
    except ValueError:
        return 0
    return last + 1 if last >= 0 else 0


class Remote:
    """Everything a pull or push shares: configuration, transport, authenticator, one client per
    host. Thread-safe; close() releases the connections."""

    def __init__(
        self,
        config: RegistriesConfig | None = None,
        *,
        transport: Transport | None = None,
        auth: Authenticator | None = None,
        credentials: Mapping[str, Credentials] | None = None,
        credential_store: CredentialStore | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config or (transport.config if transport is not None else RegistriesConfig.load())
        self.transport = transport or Transport(self.config)
        self.auth = auth or Authenticator(self.transport, credential_store, credentials=credentials)
        self.notify = notify or (lambda msg: log.warning("%s", msg))
        self._clients: dict[str, RegistryClient] = {}
        self._lock = threading.Lock()

    def registry(self, host: str) -> RegistryClient:
        with self._lock:
            client = self._clients.get(host)
            if client is None:
                client = self._clients[host] = RegistryClient(
                    host, self.transport, self.auth, notify=self.notify
                )
            return client

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
