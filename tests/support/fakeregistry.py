"""An in-process OCI distribution registry for fault injection (DESIGN C13, layer 2).

A ThreadingHTTPServer on 127.0.0.1 that implements the parts of the distribution API pybuild
uses (manifests, blobs with Range, uploads: POST/PATCH/PUT/status, cross-repo mount, tags) over
dicts, records every request, and lets a test inject faults: fail the next N requests with a
status (and headers), cut a blob download after N bytes (reset or short read), serve wrong
bytes, redirect blobs to another server, require Basic auth, choose relative or absolute upload
Locations, ask for chunked uploads (OCI-Chunk-Min-Length) or refuse big bodies (413).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest


@dataclass
class Req:
    method: str
    path: str  # path + query as received
    headers: dict[str, str]  # lower-cased names
    body_len: int = 0
    sent: int = 0  # response body bytes actually written


@dataclass
class Fault:
    method: str
    path_re: str
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1
    body: bytes = b""
    after: int = 0  # let this many matching requests through first


@dataclass
class Cut:
    digest: str
    after: int
    times: int = 1
    mode: str = "reset"  # "reset": close (RST); "short": fewer bytes then FIN; "stall": wait for release


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """Injected faults reset connections on purpose: no tracebacks on stderr."""


class FakeRegistry:
    def __init__(self, *, host: str = "127.0.0.1") -> None:
        self.blobs: dict[str, bytes] = {}
        self.repo_blobs: dict[str, set[str]] = {}
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.uploads: dict[str, tuple[str, bytearray]] = {}
        self.requests: list[Req] = []
        self.faults: list[Fault] = []
        self.cuts: list[Cut] = []
        self.corrupt: set[str] = set()
        self.redirect_blobs_to: str | None = None
        self.location_style = "relative"  # "relative" | "absolute"
        self.chunk_min_length: int | None = None
        self.max_body: int | None = None  # 413 for larger PATCH/PUT bodies
        self.basic_auth: tuple[str, str] | None = None
        self.ignore_range = False
        self.drop_patch_responses = 0  # store a PATCH body, then close without answering
        self.bearer = False  # require tokens from this server's /token endpoint
        self.tokens: set[str] = set()
        self.expire_tokens_after_patches: int | None = None
        self.release = threading.Event()  # lets "stall" cuts finish
        self.lock = threading.Lock()
        self._server = _QuietServer((host, 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.host = f"{host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeRegistry:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # -- content helpers -------------------------------------------------------------------
    def add_blob(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with self.lock:
            self.blobs[digest] = data
            self.repo_blobs.setdefault(repo, set()).add(digest)
        return digest

    def add_manifest(self, repo: str, ref: str, raw: bytes, media_type: str) -> str:
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        with self.lock:
            self.manifests[(repo, digest)] = (raw, media_type)
            if ref != digest:
                self.manifests[(repo, ref)] = (raw, media_type)
        return digest

    def fail(
        self,
        method: str,
        path_re: str,
        status: int = 500,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        after: int = 0,
    ) -> None:
        self.faults.append(Fault(method, path_re, status, headers or {}, times, body, after))

    def cut(self, digest: str, after: int, *, times: int = 1, mode: str = "reset") -> None:
        self.cuts.append(Cut(digest, after, times, mode))

    def seen(self, method: str | None = None, path_re: str = "") -> list[Req]:
        return [
            r for r in self.requests if (method is None or r.method == method) and re.search(path_re, r.path)
        ]

    # -- the handler -----------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        reg = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _record(self, body_len: int = 0) -> Req:
                req = Req(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body_len)
                with reg.lock:
                    reg.requests.append(req)
                return req

            def _read_body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _send(
                self,
                status: int,
                body: bytes = b"",
                headers: dict[str, str] | None = None,
                req: Req | None = None,
            ) -> None:
                self.send_response(status)
                hdrs = {"Docker-Distribution-API-Version": "registry/2.0", **(headers or {})}
                if "Content-Length" not in hdrs:
                    hdrs["Content-Length"] = str(len(body))
                for k, v in hdrs.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD" and body:
                    self.wfile.write(body)
                    if req is not None:
                        req.sent += len(body)

            def _error(self, status: int, code: str, msg: str, req: Req) -> None:
                body = json.dumps({"errors": [{"code": code, "message": msg}]}).encode()
                self._send(status, body, {"Content-Type": "application/json"}, req)

            def _loc(self, repo: str, uid: str) -> str:
                path = f"/v2/{repo}/blobs/uploads/{uid}?_state={uid[:8]}"
                return f"http://{reg.host}{path}" if reg.location_style == "absolute" else path

            def _auth_ok(self, req: Req) -> bool:
                if reg.bearer:
                    value = self.headers.get("Authorization", "")
                    with reg.lock:
                        ok = value.startswith("Bearer ") and value[7:] in reg.tokens
                    if ok:
                        return True
                    self._send(
                        401,
                        b'{"errors":[{"code":"UNAUTHORIZED","message":"token"}]}',
                        {
                            "WWW-Authenticate": f'Bearer realm="http://{reg.host}/token",service="fake"',
                            "Content-Type": "application/json",
                        },
                        req,
                    )
                    return False
                if reg.basic_auth is None:
                    return True
                want = "Basic " + base64.b64encode(":".join(reg.basic_auth).encode()).decode()
                if self.headers.get("Authorization") == want:
                    return True
                self._send(
                    401,
                    b'{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}',
                    {"WWW-Authenticate": 'Basic realm="fake"', "Content-Type": "application/json"},
                    req,
                )
                return False

            def _fault(self, req: Req) -> bool:
                with reg.lock:
                    for f in reg.faults:
                        if f.times > 0 and f.method == self.command and re.search(f.path_re, self.path):
                            if f.after > 0:
                                f.after -= 1
                                continue
                            f.times -= 1
                            break
                    else:
                        return False
                self._send(f.status, f.body, dict(f.headers), req)  # bodies were read by the caller
                return True

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                req = self._record()
                path = urlsplit(self.path).path
                if path == "/token" and reg.bearer:
                    token = uuid.uuid4().hex
                    with reg.lock:
                        reg.tokens.add(token)
                    return self._send(
                        200, json.dumps({"token": token}).encode(), {"Content-Type": "application/json"}, req
                    )
                if self._fault(req) or not self._auth_ok(req):
                    return
                if path == "/v2/":
                    return self._send(200, b"{}", {"Content-Type": "application/json"}, req)
                m = re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", path)
                if m:
                    with reg.lock:
                        item = reg.manifests.get((m.group(1), m.group(2)))
                    if item is None:
                        return self._error(404, "MANIFEST_UNKNOWN", "manifest unknown", req)
                    raw, mtype = item
                    return self._send(
                        200,
                        raw,
                        {
                            "Content-Type": mtype,
                            "Docker-Content-Digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
                        },
                        req,
                    )
                m = re.fullmatch(r"/v2/(.+)/blobs/(sha256:[0-9a-f]{64})", path)
                if m:
                    return self._blob(m.group(1), m.group(2), req)
                m = re.fullmatch(r"/v2/(.+)/blobs/uploads/([^/]+)", path)
                if m:
                    with reg.lock:
                        up = reg.uploads.get(m.group(2))
                    if up is None:
                        return self._error(404, "BLOB_UPLOAD_UNKNOWN", "upload unknown", req)
                    end = len(up[1]) - 1
                    return self._send(
                        204,
                        b"",
                        {"Range": f"0-{max(end, 0)}", "Location": self._loc(m.group(1), m.group(2))},
                        req,
                    )
                m = re.fullmatch(r"/v2/(.+)/tags/list", path)
                if m:
                    tags = sorted(
                        ref
                        for (repo, ref) in reg.manifests
                        if repo == m.group(1) and not ref.startswith("sha256:")
                    )
                    return self._send(
                        200,
                        json.dumps({"name": m.group(1), "tags": tags}).encode(),
                        {"Content-Type": "application/json"},
                        req,
                    )
                if path.startswith("/external/"):
                    digest = path.rsplit("/", 1)[1]
                    return self._blob(None, digest, req)
                self._error(404, "NOT_FOUND", "not found", req)

            def _blob(self, repo: str | None, digest: str, req: Req) -> None:
                with reg.lock:
                    data = reg.blobs.get(digest)
                    known = repo is None or digest in reg.repo_blobs.get(repo, set())
                if data is None or not known:
                    return self._error(404, "BLOB_UNKNOWN", "blob unknown", req)
                if repo is not None and reg.redirect_blobs_to:
                    return self._send(
                        307, b"", {"Location": f"{reg.redirect_blobs_to}/external/{digest}"}, req
                    )
                if digest in reg.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start = 0
                rng = self.headers.get("Range")
                status = 200
                headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
                if rng and not reg.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, req)
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                body = data[start:]
                cut = None
                with reg.lock:
                    for c in reg.cuts:
                        if c.digest == digest and c.times > 0 and self.command == "GET":
                            c.times -= 1
                            cut = c
                            break
                if cut is None:
                    return self._send(status, body, headers, req)
                self.send_response(status)
                headers["Content-Length"] = str(len(body))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                part = body[: cut.after]
                self.wfile.write(part)
                self.wfile.flush()
                req.sent += len(part)
                if cut.mode == "stall":
                    reg.release.wait(60)
                if cut.mode == "reset":
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def do_POST(self) -> None:
                body = self._read_body()
                req = self._record(len(body))
                if self._fault(req) or not self._auth_ok(req):
                    return
                parts = urlsplit(self.path)
                m = re.fullmatch(r"/v2/(.+)/blobs/uploads/", parts.path)
                if not m:
                    return self._error(404, "NOT_FOUND", "not found", req)
                repo = m.group(1)
                q = parse_qs(parts.query)
                if "mount" in q:
                    digest, src = q["mount"][0], (q.get("from") or [""])[0]
                    with reg.lock:
                        ok = digest in reg.repo_blobs.get(src, set())
                        if ok:
                            reg.repo_blobs.setdefault(repo, set()).add(digest)
                    if ok:
                        return self._send(
                            201,
                            b"",
                            {"Location": f"/v2/{repo}/blobs/{digest}", "Docker-Content-Digest": digest},
                            req,
                        )
                uid = uuid.uuid4().hex
                with reg.lock:
                    reg.uploads[uid] = (repo, bytearray())
                headers = {"Location": self._loc(repo, uid), "Range": "0-0", "Docker-Upload-UUID": uid}
                if reg.chunk_min_length:
                    headers["OCI-Chunk-Min-Length"] = str(reg.chunk_min_length)
                self._send(202, b"", headers, req)

            def do_PATCH(self) -> None:
                body = self._read_body()
                req = self._record(len(body))
                if self._fault(req) or not self._auth_ok(req):
                    return
                m = re.fullmatch(r"/v2/(.+)/blobs/uploads/([^/]+)", urlsplit(self.path).path)
                if not m:
                    return self._error(404, "NOT_FOUND", "not found", req)
                repo, uid = m.group(1), m.group(2)
                with reg.lock:
                    up = reg.uploads.get(uid)
                if up is None:
                    return self._error(404, "BLOB_UPLOAD_UNKNOWN", "upload unknown", req)
                if reg.max_body is not None and len(body) > reg.max_body:
                    return self._error(413, "SIZE_INVALID", "too large", req)
                cr = self.headers.get("Content-Range")
                if cr:
                    start = int(cr.split("-")[0])
                    if start != len(up[1]):
                        return self._send(
                            416,
                            b"",
                            {"Range": f"0-{max(len(up[1]) - 1, 0)}", "Location": self._loc(repo, uid)},
                            req,
                        )
                up[1].extend(body)
                with reg.lock:
                    if reg.expire_tokens_after_patches is not None:
                        reg.expire_tokens_after_patches -= 1
                        if reg.expire_tokens_after_patches <= 0:
                            reg.tokens.clear()
                            reg.expire_tokens_after_patches = None
                    drop = reg.drop_patch_responses > 0
                    if drop:
                        reg.drop_patch_responses -= 1
                if drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._send(202, b"", {"Location": self._loc(repo, uid), "Range": f"0-{len(up[1]) - 1}"}, req)

            def do_PUT(self) -> None:
                body = self._read_body()
                req = self._record(len(body))
                if self._fault(req) or not self._auth_ok(req):
                    return
                parts = urlsplit(self.path)
                m = re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", parts.path)
                if m:
                    mtype = self.headers.get("Content-Type", "")
                    digest = reg.add_manifest(m.group(1), m.group(2), body, mtype)
                    return self._send(
                        201,
                        b"",
                        {"Docker-Content-Digest": digest, "Location": f"/v2/{m.group(1)}/manifests/{digest}"},
                        req,
                    )
                m = re.fullmatch(r"/v2/(.+)/blobs/uploads/([^/]+)", parts.path)
                if not m:
                    return self._error(404, "NOT_FOUND", "not found", req)
                repo, uid = m.group(1), m.group(2)
                if reg.max_body is not None and len(body) > reg.max_body:
                    return self._error(413, "SIZE_INVALID", "too large", req)
                with reg.lock:
                    up = reg.uploads.pop(uid, None)
                if up is None:
                    return self._error(404, "BLOB_UPLOAD_UNKNOWN", "upload unknown", req)
                data = bytes(up[1]) + body
                digest = parse_qs(parts.query).get("digest", [""])[0]
                if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                    return self._error(400, "DIGEST_INVALID", "digest mismatch", req)
                reg.add_blob(repo, data)
                self._send(
                    201, b"", {"Location": f"/v2/{repo}/blobs/{digest}", "Docker-Content-Digest": digest}, req
                )

        return Handler


@pytest.fixture
def fake_registry() -> Iterator[FakeRegistry]:
    reg = FakeRegistry().start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def fake_registry_factory() -> Iterator[Callable[..., FakeRegistry]]:
    made: list[FakeRegistry] = []

    def make(**kw: Any) -> FakeRegistry:
        reg = FakeRegistry(**kw).start()
        made.append(reg)
        return reg

    try:
        yield make
    finally:
        for reg in made:
            reg.stop()
