"""Errors of the distribution client (DESIGN C6): every message names the method, the redacted URL
(userinfo and secret-looking query values dropped) and the status, plus the registry's OCI
``errors[]`` diagnostics. Imports registry.errors only: requests objects come in duck-typed, so this
module never imports requests."""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from registry.errors import RegistryError

_SECRET_PARAMS = re.compile(r"(token|signature|sig|password|secret|key|credential|code|auth)", re.I)


def redact(url: str) -> str:
    """Drop userinfo and the values of query parameters that may carry secrets."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    if ":" in (parts.hostname or "") and not netloc.startswith("["):
        netloc = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "REDACTED" if _SECRET_PARAMS.search(k) else v) for k, v in pairs], safe=":/")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def parse_oci_errors(body: bytes) -> list[tuple[str, str, Any]]:
    """The ``errors`` array of a distribution error body as (code, message, detail); [] if absent."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("errors"), list):
        return []
    out = []
    for item in doc["errors"]:
        if isinstance(item, dict):
            out.append((str(item.get("code", "")), str(item.get("message", "")), item.get("detail")))
    return out


class RemoteError(RegistryError):
    """Base for errors talking to a remote registry."""


class RegistryHTTPError(RemoteError):
    """A registry (or token server) answered with a status we do not handle."""

    def __init__(
        self,
        method: str,
        url: str,
        status: int,
        body: bytes = b"",
        *,
        what: str = "",
        hint: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.method, self.url, self.status = method, redact(url), status
        self.diagnostics = parse_oci_errors(body) if body else []
        self.what = what
        self.retry_after = retry_after
        super().__init__(self._summary(body), hint=hint or self._default_hint())

    def _summary(self, body: bytes) -> str:
        head = f"{self.what}: " if self.what else ""
        text = f"{head}{self.method} {self.url}: {self.status}"
        if self.diagnostics:
            text += " " + "; ".join(f"{code}: {msg}" if msg else code for code, msg, _ in self.diagnostics)
        elif self.method != "HEAD" and body:
            snippet = body[:200].decode("utf-8", "replace").strip().splitlines()
            if snippet and snippet[0]:
                text += f" ({snippet[0][:120]})"
        return text

    def _default_hint(self) -> str | None:
        if self.status == 401:
            host = urlsplit(self.url).netloc
            return f"run `pybuild login {host}` (or check the credentials stored for it)"
        if self.status == 403:
            return "the credentials lack permission for this repository"
        if self.status == 429:
            return "the registry is rate limiting: wait and retry, or log in for a higher limit"
        return None


class Unauthorized(RegistryHTTPError):
    """401/403 after authenticating (or with no usable credentials)."""


class NotFound(RegistryHTTPError):
    """404: the manifest, tag, blob or repository does not exist."""


class TransportError(RemoteError):
    """The connection failed (refused, reset, timeout, TLS) before an answer arrived."""

    def __init__(self, method: str, url: str, why: str, *, hint: str | None = None) -> None:
        self.method, self.url = method, redact(url)
        super().__init__(f"{method} {self.url}: {why}", hint=hint)


class TLSError(TransportError):
    pass


class RedirectError(RemoteError):
    exit_code: ClassVar[int] = 1


class ManifestError(RemoteError):
    """A manifest that cannot be pulled (schema 1, too large, wrong shape, no platform)."""


class PlatformNotFound(ManifestError):
    pass


class BlobVerifyError(RemoteError):
    """A downloaded blob did not match its descriptor (size or digest)."""

    def __init__(self, ref: str, digest: str, why: str) -> None:
        super().__init__(
            f"pull {ref}: blob {digest}: {why}",
            hint="nothing was stored for this blob; retry, and report the registry if it persists",
        )
        self.digest = digest


class CredentialsError(RemoteError):
    """A credential helper or a credentials file failed."""


class UploadError(RemoteError):
    pass
