"""Registry authentication: WWW-Authenticate parsing, Basic, the Bearer token flow with a token cache,
and credentials shared with docker/podman/skopeo (docker's config.json with credsStore/credHelpers;
containers' auth.json read-only). A credential goes only to the host it was stored for (and the token
realm that host names), is never logged or put in an error, and is written 0600 atomically. Imports
registry (requests through the transport)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from registry.remote.config import DOCKER_HUB_API, is_loopback
from registry.remote.errors import CredentialsError, RegistryHTTPError, RemoteError, Unauthorized
from registry.remote.transport import Transport
from registry.store import atomic_write

log = logging.getLogger("pybuild." + __name__)

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_NAMES = frozenset({"docker.io", "index.docker.io", DOCKER_HUB_API, "registry.hub.docker.com"})
CLIENT_ID = "pybuild"
TOKEN_MIN_TTL = 60  # the distribution spec's default when expires_in is absent
TOKEN_MARGIN = 10  # seconds before expiry a cached token is dropped


# -- challenges -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Challenge:
    """One WWW-Authenticate challenge: scheme and its parameters."""

    scheme: str  # lowercase: "bearer", "basic"
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str | None:
        return self.params.get("service")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a WWW-Authenticate value (RFC 7235): several challenges, quoted or bare params."""
    out: list[Challenge] = []
    i, n = 0, len(header)
    current: tuple[str, dict[str, str]] | None = None

    def skip(chars: str) -> None:
        nonlocal i
        while i < n and header[i] in chars:
            i += 1

    while i < n:
        skip(" \t,")
        start = i
        while i < n and header[i] not in " \t,=":
            i += 1
        token = header[start:i]
        if not token:
            break
        skip(" \t")
        if i < n and header[i] == "=" and current is not None:
            i += 1
            skip(" \t")
            if i < n and header[i] == '"':
                i += 1
                buf = []
                while i < n and header[i] != '"':
                    if header[i] == "\\" and i + 1 < n:
                        i += 1
                    buf.append(header[i])
                    i += 1
                i += 1
                value = "".join(buf)
            else:
                start = i
                while i < n and header[i] not in ",":
                    i += 1
                value = header[start:i].strip()
            current[1][token.lower()] = value
        else:
            # token68 (Basic xyz==) after a scheme is ignored; a new token starts a challenge
            if current is not None and i < n and header[i] == "=":
                skip("=")
                continue
            if current is not None:
                out.append(Challenge(current[0], current[1]))
            current = (token.lower(), {})
    if current is not None:
        out.append(Challenge(current[0], current[1]))
    return out


def repo_scope(repository: str, actions: Iterable[str]) -> str:
    order = {"pull": 0, "push": 1, "delete": 2, "*": 3}
    acts = sorted(set(actions), key=lambda a: (order.get(a, 9), a))
    return f"repository:{repository}:{','.join(acts)}"


def merge_scopes(scopes: Iterable[str]) -> list[str]:
    """Union of actions per resource, first-seen order: one scope string per repository."""
    merged: dict[tuple[str, str], list[str]] = {}
    for scope in scopes:
        if not scope:
            continue
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if not name:
            merged.setdefault((scope, ""), [])
            continue
        acts = merged.setdefault((kind, name), [])
        for a in actions.split(","):
            if a and a not in acts:
                acts.append(a)
    out = []
    for (kind, name), acts in merged.items():
        if not name:
            out.append(kind)
        elif kind == "repository":
            out.append(repo_scope(name, acts))
        else:
            out.append(f"{kind}:{name}:{','.join(sorted(acts))}")
    return out


# -- credentials ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and password, or an identity token (never printed)."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)  # an OAuth2 refresh token
    registry_token: str = field(default="", repr=False)  # a bearer token to send as is

    def __repr__(self) -> str:  # never show secrets, even in a debugger or a log line
        return f"Credentials(username={self.username!r}, secret=<redacted>)"

    __str__ = __repr__

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.identity_token or self.registry_token)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def docker_config_path() -> Path:
    env = os.environ.get("DOCKER_CONFIG")
    base = Path(env) if env else Path.home() / ".docker"
    return base / "config.json"


def containers_auth_paths() -> list[Path]:
    out = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        out.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        out.append(Path(runtime) / "containers" / "auth.json")
    return out


def normalize_key(key: str) -> str:
    """docker's ConvertToHostname: strip a scheme and a path ('https://h/v1/' → 'h')."""
    for scheme in ("https://", "http://"):
        if key.startswith(scheme):
            key = key[len(scheme) :]
            return key.split("/", 1)[0]
    return key


def config_key(host: str) -> str:
    """The key docker writes for a registry: Docker Hub has its historical URL."""
    return DOCKER_HUB_KEY if host in _HUB_NAMES else host


def _decode_auth(value: str) -> tuple[str, str]:
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise CredentialsError("credentials file: an 'auth' entry is not valid base64") from None
    user, sep, password = raw.partition(":")
    if not sep:
        raise CredentialsError("credentials file: an 'auth' entry is not 'user:password'")
    return user, password


class CredentialStore:
    """docker's config.json (read and written) plus containers' auth.json (read)."""

    def __init__(self, path: Path | None = None, *, extra_read: Sequence[Path] | None = None) -> None:
        self.path = path or docker_config_path()
        self.extra_read = list(containers_auth_paths() if extra_read is None else extra_read)
        self._lock = threading.Lock()

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise CredentialsError(f"cannot read {path}: {exc.strerror}") from None
        if not text.strip():
            return {}
        try:
            doc = json.loads(text)
        except ValueError:
            raise CredentialsError(
                f"{path}: not valid JSON", hint="fix or remove the file, then `pybuild login` again"
            ) from None
        return doc if isinstance(doc, dict) else {}

    # lookup -----------------------------------------------------------------------------
    def get(self, host: str, repository: str = "") -> Credentials | None:
        """Credentials for a registry host (``registry-1.docker.io``/``docker.io`` map to Hub)."""
        doc = self._read(self.path)
        names = [config_key(host)] + (
            [host] if host not in _HUB_NAMES else ["docker.io", "index.docker.io", "registry-1.docker.io"]
        )
        helpers = doc.get("credHelpers") or {}
        for name in names:
            plain = normalize_key(name)
            helper = helpers.get(name) or helpers.get(plain)
            if helper:
                return helper_get(helper, config_key(host))
        if doc.get("credsStore"):
            found = helper_get(str(doc["credsStore"]), config_key(host))
            if found is not None:
                return found
        creds = self._from_auths(doc.get("auths") or {}, names)
        if creds is not None:
            return creds
        for extra in self.extra_read:
            edoc = self._read(extra)
            auths = edoc.get("auths") or {}
            # auth.json may hold per-namespace entries: most specific first
            scoped = []
            if repository:
                parts = repository.split("/")
                scoped = [f"{host}/{'/'.join(parts[:i])}" for i in range(len(parts), 0, -1)]
            creds = self._from_auths(auths, scoped + names)
            if creds is not None:
                return creds
        return None

    @staticmethod
    def _from_auths(auths: Mapping[str, Any], names: Sequence[str]) -> Credentials | None:
        if not isinstance(auths, dict):
            return None
        wanted = [normalize_key(n) if n.startswith(("http://", "https://")) else n for n in names]
        index: dict[str, Mapping[str, Any]] = {}
        for key, entry in auths.items():
            if isinstance(entry, dict):
                index.setdefault(
                    normalize_key(key) if key.startswith(("http://", "https://")) else key, entry
                )
        for name in wanted:
            entry = index.get(name)
            if not entry:
                continue
            user = password = ""
            if entry.get("auth"):
                user, password = _decode_auth(str(entry["auth"]))
            elif entry.get("username"):
                user, password = str(entry["username"]), str(entry.get("password", ""))
            token = str(entry.get("identitytoken") or "")
            registry_token = str(entry.get("registrytoken") or "")
            creds = Credentials(user, password, token, registry_token)
            if not creds.empty:
                return creds
        return None

    # login/logout -----------------------------------------------------------------------
    def save(self, host: str, creds: Credentials) -> str:
        """Store credentials for ``host`` where docker would (helper or file). Returns where."""
        key = config_key(host)
        with self._lock:
            doc = self._read(self.path)
            helper = (
                (doc.get("credHelpers") or {}).get(key)
                or (doc.get("credHelpers") or {}).get(host)
                or doc.get("credsStore")
            )
            if helper:
                secret = creds.identity_token or creds.password
                user = "<token>" if creds.identity_token else creds.username
                helper_call(
                    str(helper), "store", json.dumps({"ServerURL": key, "Username": user, "Secret": secret})
                )
                # docker keeps an empty entry so `docker info`/logout know about the registry
                doc.setdefault("auths", {})[key] = {}
                self._write(doc)
                return f"credential helper docker-credential-{helper}"
            entry: dict[str, str] = {
                "auth": base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
            }
            if creds.identity_token:
                entry = {
                    "auth": base64.b64encode(f"{creds.username}:".encode()).decode(),
                    "identitytoken": creds.identity_token,
                }
            doc.setdefault("auths", {})[key] = entry
            self._write(doc)
            return str(self.path)

    def erase(self, host: str) -> bool:
        """Remove stored credentials for ``host``; False when there were none."""
        key = config_key(host)
        with self._lock:
            doc = self._read(self.path)
            auths = doc.get("auths") or {}
            found = False
            for k in list(auths):
                if k in (key, host) or normalize_key(k) == normalize_key(key):
                    del auths[k]
                    found = True
            helper = (
                (doc.get("credHelpers") or {}).get(key)
                or (doc.get("credHelpers") or {}).get(host)
                or doc.get("credsStore")
            )
            if helper:
                try:
                    helper_call(str(helper), "erase", key)
                    found = True
                except CredentialsError:
                    pass
            if found:
                doc["auths"] = auths
                self._write(doc)
            return found

    def _write(self, doc: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.path, (json.dumps(doc, indent="\t") + "\n").encode(), mode=0o600)
        self.path.chmod(0o600)


def helper_call(helper: str, action: str, payload: str) -> str:
    import shutil
    import subprocess

    exe = shutil.which(f"docker-credential-{helper}")
    if exe is None:
        raise CredentialsError(
            f"credential helper docker-credential-{helper}: not found on PATH",
            hint="install it, or remove credsStore/credHelpers from the docker config",
        )
    try:
        proc = subprocess.run(
            [exe, action], input=payload.encode(), capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CredentialsError(f"credential helper docker-credential-{helper} {action}: {exc}") from None
    if proc.returncode != 0:
        msg = proc.stdout.decode(errors="replace").strip() or proc.stderr.decode(errors="replace").strip()
        raise CredentialsError(
            f"credential helper docker-credential-{helper} {action}: {msg[:200] or f'exit {proc.returncode}'}"
        )
    return proc.stdout.decode()


def helper_get(helper: str, server: str) -> Credentials | None:
    try:
        out = helper_call(helper, "get", server)
    except CredentialsError as exc:
        if "not found" in str(exc).lower():
            return None
        raise
    try:
        doc = json.loads(out)
    except ValueError:
        raise CredentialsError(f"credential helper docker-credential-{helper}: invalid JSON answer") from None
    user, secret = str(doc.get("Username", "")), str(doc.get("Secret", ""))
    if user == "<token>":
        return Credentials(identity_token=secret)
    return Credentials(user, secret)


# -- the authenticator ------------------------------------------------------------------
@dataclass
class _Token:
    """A cached bearer token and when it stops being usable."""

    value: str
    expires: float


class Authenticator:
    """Turns a 401 challenge into an Authorization header; caches tokens per realm/service/scope.

    One instance is shared by every thread of a pull/push (it locks its caches).
    """

    def __init__(
        self,
        transport: Transport,
        store: CredentialStore | None = None,
        *,
        credentials: Mapping[str, Credentials] | None = None,
    ) -> None:
        self.transport = transport
        self.store = store if store is not None else CredentialStore()
        self._explicit = dict(credentials or {})
        self._creds: dict[str, Credentials | None] = {}
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, str, tuple[str, ...], bool], _Token] = {}
        self._anonymous_hosts: set[str] = set()
        self._flights: dict[tuple[str, str, tuple[str, ...], bool], threading.Lock] = {}
        self._lock = threading.Lock()
        self.warnings: list[str] = []

    def credentials(self, host: str, repository: str = "") -> Credentials | None:
        if host in self._explicit:
            return self._explicit[host]
        with self._lock:
            if host not in self._creds:
                self._creds[host] = self.store.get(host, repository)
            return self._creds[host]

    def header(self, host: str, scopes: Sequence[str]) -> str | None:
        """The Authorization header to send before any challenge (cached token or basic)."""
        with self._lock:
            ch = self._challenges.get(host)
        if ch is None:
            return None
        if ch.scheme == "basic":
            creds = self.credentials(host)
            return creds.basic() if creds is not None and creds.username else None
        if ch.scheme == "bearer":
            anonymous = host in self._anonymous_hosts
            key = (ch.realm, ch.service or "", tuple(sorted(scopes)), anonymous)
            with self._lock:
                tok = self._tokens.get(key)
            if tok is not None and tok.expires > time.monotonic():
                return f"Bearer {tok.value}"
        return None

    def challenge(
        self,
        host: str,
        www_authenticate: str,
        scopes: Sequence[str],
        *,
        anonymous: bool = False,
        sent: str | None = None,
    ) -> str | None:
        """Answer a challenge: returns the new Authorization header (None if none applies).

        Raises Unauthorized when the token server rejects the credentials.
        """
        challenges = parse_challenges(www_authenticate)
        chosen = next((c for c in challenges if c.scheme == "bearer"), None) or next(
            (c for c in challenges if c.scheme == "basic"), None
        )
        if chosen is None:
            return None
        with self._lock:
            self._challenges[host] = chosen
            if anonymous:
                self._anonymous_hosts.add(host)
        creds = None if anonymous else self.credentials(host)
        if chosen.scheme == "basic":
            if creds is None or not creds.username:
                return None
            return creds.basic()
        if creds is not None and creds.registry_token:
            return f"Bearer {creds.registry_token}"
        # Scopes the server asked for merged into ours (a registry may name one we did not know).
        wanted = merge_scopes([*scopes, *chosen.params.get("scope", "").split(" ")])
        key = (chosen.realm, chosen.service or "", tuple(sorted(scopes)), anonymous)
        with self._lock:
            flight = self._flights.setdefault(key, threading.Lock())
        with flight:  # parallel workers hitting the same 401 fetch one token, not one each
            with self._lock:
                tok = self._tokens.get(key)
            if tok is not None and tok.expires > time.monotonic() and f"Bearer {tok.value}" != sent:
                return f"Bearer {tok.value}"
            token, ttl = self._fetch_token(host, chosen, wanted, creds)
            with self._lock:
                self._tokens[key] = _Token(token, time.monotonic() + max(ttl, TOKEN_MIN_TTL) - TOKEN_MARGIN)
        return f"Bearer {token}"

    def forget(self, host: str, header: str | None = None) -> None:
        """Drop cached tokens for ``host`` (a 401 mid-upload: the token expired); with ``header``
        only the token that was refused."""
        with self._lock:
            ch = self._challenges.get(host)
            if ch is not None:
                for key in [k for k in self._tokens if k[0] == ch.realm and k[1] == (ch.service or "")]:
                    if header is None or f"Bearer {self._tokens[key].value}" == header:
                        del self._tokens[key]

    # token server -----------------------------------------------------------------------
    def _fetch_token(
        self, host: str, ch: Challenge, scopes: Sequence[str], creds: Credentials | None
    ) -> tuple[str, float]:
        realm = ch.realm
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RemoteError(f"registry {host}: bad token realm {realm!r} in WWW-Authenticate")
        realm_host = parts.netloc
        if parts.scheme == "http" and not (
            is_loopback(realm_host)
            or self.transport.settings(realm_host).insecure
            or self.transport.settings(host).insecure
        ):
            raise RemoteError(
                f"registry {host}: token realm {realm} is plain http",
                hint=f"mark it insecure (--insecure-registry {realm_host}) if you trust it",
            )
        query: list[tuple[str, str]] = []
        if ch.service:
            query.append(("service", ch.service))
        query.extend(("scope", s) for s in scopes)
        if creds is not None and creds.identity_token:
            return self._oauth(
                host,
                realm,
                ch,
                scopes,
                {"grant_type": "refresh_token", "refresh_token": creds.identity_token},
                fallback=None,
            )
        if creds is not None and creds.username:
            form = {"grant_type": "password", "username": creds.username, "password": creds.password}
            return self._oauth(host, realm, ch, scopes, form, fallback=(query, creds))
        return self._get_token(host, realm, query, None)

    def _oauth(
        self,
        host: str,
        realm: str,
        ch: Challenge,
        scopes: Sequence[str],
        form: dict[str, str],
        fallback: tuple[list[tuple[str, str]], Credentials] | None,
    ) -> tuple[str, float]:
        data = {**form, "client_id": CLIENT_ID, "access_type": "offline"}
        if ch.service:
            data["service"] = ch.service
        if scopes:
            data["scope"] = " ".join(scopes)
        body = urlencode(data).encode()
        resp = self.transport.request(
            "POST", realm, body=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        with contextlib.closing(resp):
            # GHCR answers 405, GCR 404, Artifactory 401 and ACR 400 to the OAuth2 POST: fall back
            # to the GET flow with Basic credentials, as docker and containerd do.
            if fallback is not None and resp.status_code in (400, 401, 404, 405):
                query, creds = fallback
                return self._get_token(host, realm, query, creds)
            return self._token_from(host, realm, "POST", resp)

    def _get_token(
        self, host: str, realm: str, query: list[tuple[str, str]], creds: Credentials | None
    ) -> tuple[str, float]:
        sep = "&" if "?" in realm else "?"
        url = realm + (sep + urlencode(query) if query else "")
        headers = {"Authorization": creds.basic()} if creds is not None else {}
        resp = self.transport.request("GET", url, headers=headers)
        with contextlib.closing(resp):
            return self._token_from(host, url, "GET", resp)

    def _token_from(self, host: str, url: str, method: str, resp: Any) -> tuple[str, float]:
        body = resp.raw.read(1 << 20, decode_content=True)
        if resp.status_code in (401, 403):
            raise Unauthorized(
                method,
                url,
                resp.status_code,
                body,
                what=f"authenticate to {host}",
                hint=f"the credentials for {host} were rejected; run `pybuild login {host}`",
            )
        if resp.status_code != 200:
            raise RegistryHTTPError(method, url, resp.status_code, body, what=f"token for {host}")
        try:
            doc = json.loads(body)
        except ValueError:
            raise RemoteError(f"token server for {host}: answer is not JSON") from None
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not token or not isinstance(token, str):
            raise RemoteError(f"token server for {host}: no token in the answer")
        ttl = doc.get("expires_in")
        refresh = doc.get("refresh_token")
        if isinstance(refresh, str) and refresh:
            with self._lock:
                self.last_refresh_token = refresh
        return token, float(ttl) if isinstance(ttl, int | float) and ttl > 0 else TOKEN_MIN_TTL

    last_refresh_token: str = ""
