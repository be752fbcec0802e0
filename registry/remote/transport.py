"""HTTP transport (DESIGN C10): a requests.Session per thread, (connect, read) timeouts, identity
encoding, raw streams, our own redirect loop (never ~/.netrc; Authorization dropped when scheme, host
or port change; no https -> http; 10 hops) and bounded retries (a connection failure before any
answer, 408/429/5xx; backoff honouring Retry-After; a body re-sent only when bytes or a factory).
Imports requests/urllib3 and registry."""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import random
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
import urllib3

from registry.remote.config import HostSettings, RegistriesConfig
from registry.remote.errors import (
    RedirectError,
    TLSError,
    TransportError,
    redact,
)

log = logging.getLogger("pybuild." + __name__)

VERSION = "0.1.0"
USER_AGENT = f"pybuild/{VERSION} python/{sys.version_info.major}.{sys.version_info.minor}"
MAX_REDIRECTS = 10
SEND_BLOCK = 1 << 20


class BodyStream(Protocol):
    """What an upload body offers (requests streams it by read()): a file, or push's verified
    blob slice."""

    def read(self, n: int = -1, /) -> bytes: ...


BodyFactory = Callable[[], BodyStream]     # called per attempt: a retry gets a fresh stream
Body = bytes | BodyFactory | None


def _retry_status(status: int) -> bool:
    return status in (408, 429) or (500 <= status <= 599 and status not in (501, 505))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(tz=UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long a request is retried."""

    attempts: int = 3  # total tries of one request, first one included
    base_delay: float = 0.5  # first backoff; doubles per retry
    max_delay: float = 8.0  # cap of one backoff
    max_retry_after: float = 60.0  # a longer Retry-After is not waited for
    deadline: float = 600.0  # overall seconds for one request including its retries

    def backoff(self, attempt: int) -> float:
        delay = min(self.max_delay, self.base_delay * (2**attempt))
        jitter: float = random.random()  # noqa: S311 - jitter, not security
        return float(delay * (0.75 + jitter / 4))


class _Adapter(requests.adapters.HTTPAdapter):
    """An adapter with large send blocks and (optionally) a host-specific SSL context."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, pool: int = 8) -> None:
        self._ssl_context = ssl_context
        super().__init__(pool_connections=pool, pool_maxsize=pool, max_retries=0)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        pool_kwargs.setdefault("blocksize", SEND_BLOCK)
        if self._ssl_context is not None:
            pool_kwargs["ssl_context"] = self._ssl_context
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)


def _ssl_context(settings: HostSettings) -> ssl.SSLContext | None:
    if not settings.ca_files and settings.client_cert is None:
        return None
    ctx = ssl.create_default_context()
    for ca in settings.ca_files:
        ctx.load_verify_locations(cafile=str(ca))
    if settings.client_cert is not None:
        ctx.load_cert_chain(str(settings.client_cert[0]), str(settings.client_cert[1]))
    return ctx


class Transport:
    """Sends requests to registries. Thread-safe: each thread gets its own Session."""

    def __init__(
        self,
        config: RegistriesConfig | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: tuple[float, float] = (10.0, 60.0),
        user_agent: str = USER_AGENT,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config or RegistriesConfig.load()
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.user_agent = user_agent
        self.sleep = sleep
        self._local = threading.local()
        self._lock = threading.Lock()
        self._schemes: dict[str, str] = {}
        self._probing: dict[str, threading.Lock] = {}
        self._contexts: dict[str, ssl.SSLContext | None] = {}
        self._sessions: list[requests.Session] = []
        if not self.config.tls_verify or self.config.insecure_hosts:
            # The user opted out of verification for some hosts; the per-request warning adds nothing.
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    # -- sessions ------------------------------------------------------------------------
    def session(self) -> requests.Session:
        s: requests.Session | None = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.trust_env = False  # no ~/.netrc credentials, no surprise proxies (see _proxies)
            s.headers.clear()
            s.headers.update(
                {
                    "User-Agent": self.user_agent,
                    "Accept-Encoding": "identity",
                    "Accept": "*/*",
                    "Connection": "keep-alive",
                }
            )
            s.mount("https://", _Adapter())
            s.mount("http://", _Adapter())
            self._local.session = s
            self._local.mounted = set()
            with self._lock:
                self._sessions.append(s)
        return s

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for s in sessions:
            s.close()

    def settings(self, host: str) -> HostSettings:
        return self.config.host_settings(host)

    def _prepare_host(self, session: requests.Session, host: str) -> None:
        mounted: set[str] = self._local.mounted
        if host in mounted:
            return
        with self._lock:
            if host not in self._contexts:
                self._contexts[host] = _ssl_context(self.settings(host))
            ctx = self._contexts[host]
        if ctx is not None:
            session.mount(f"https://{host}/", _Adapter(ctx))
        mounted.add(host)

    # -- scheme --------------------------------------------------------------------------
    def base_url(self, host: str) -> str:
        """``https://host`` or, for loopback/insecure hosts that speak plain HTTP, ``http://host``.

        Like docker: try HTTPS first; fall back to HTTP only for hosts allowed to use it and only
        when the HTTP endpoint answers like a registry (200/401 on /v2/). One probe per host,
        however many threads ask at once.
        """
        scheme = self._schemes.get(host)
        if scheme is None:
            with self._lock:
                lock = self._probing.setdefault(host, threading.Lock())
            with lock:
                scheme = self._schemes.get(host)
                if scheme is None:
                    scheme = self._probe(host)
                    self._schemes[host] = scheme
        return f"{scheme}://{host}"

    def _probe(self, host: str) -> str:
        settings = self.settings(host)
        if not (settings.insecure or settings.loopback):
            return "https"
        url = f"https://{host}/v2/"
        if settings.ca_files or settings.client_cert is not None or self._proxies(url):
            try:
                resp = self._send_once("GET", url, {}, None, timeout=(5.0, 15.0))
                _release(resp)
                return "https"
            except TransportError as exc:
                tls_exc = exc
        else:
            # Does it speak TLS at all? A bare handshake answers that without loading the CA
            # bundle (~20 ms); the requests that follow verify as the settings say.
            try:
                _tls_handshake(host, timeout=5.0)
                return "https"
            except OSError as exc:
                tls_exc = TransportError("GET", url, _reason(exc))
        try:
            resp = self._send_once("GET", f"http://{host}/v2/", {}, None, timeout=(5.0, 15.0))
        except TransportError:
            raise tls_exc from None
        _release(resp)
        if resp.status_code in (200, 401) or "Docker-Distribution-Api-Version" in resp.headers:
            log.debug("%s: https failed (%s); using plain http", host, tls_exc)
            return "http"
        raise tls_exc from None

    # -- sending -------------------------------------------------------------------------
    def _verify(self, url: str) -> bool:
        host = urlsplit(url).netloc
        return not self.settings(host).insecure

    def _proxies(self, url: str) -> dict[str, str]:
        if not any(k.lower().endswith("_proxy") for k in os.environ):
            return {}
        return dict(requests.utils.get_environ_proxies(url))

    def _send_once(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body,
        *,
        timeout: tuple[float, float] | None = None,
    ) -> requests.Response:
        session = self.session()
        host = urlsplit(url).netloc
        if url.startswith("https://"):
            self._prepare_host(session, host)
        elif not url.startswith("http://"):
            raise RedirectError(f"{method} {redact(url)}: only http and https URLs are followed")
        data: Any = body() if callable(body) else body
        try:
            return session.request(
                method,
                url,
                headers=dict(headers),
                data=data,
                stream=True,
                allow_redirects=False,
                timeout=timeout or self.timeout,
                verify=self._verify(url),
                proxies=self._proxies(url),
            )
        except requests.exceptions.SSLError as exc:
            hint = None
            if self.settings(host).loopback or self.settings(host).insecure is False:
                hint = (
                    f"put the registry's CA in certs.d/{host}/ca.crt, or mark it insecure: "
                    f"--insecure-registry {host}"
                )
            raise TLSError(method, url, f"TLS failed ({_reason(exc)})", hint=hint) from None
        except (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            urllib3.exceptions.HTTPError,
        ) as exc:
            raise TransportError(method, url, _reason(exc)) from None
        finally:
            if callable(body) and hasattr(data, "close"):
                # the factory's stream is ours to close; requests has read what it needed
                with contextlib.suppress(OSError):
                    data.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        retry: bool = True,
        on_retry: Callable[[str], None] | None = None,
    ) -> requests.Response:
        """Send one request (following redirects ourselves) with retries; returns the final
        response, whatever its status, with the body unread (``stream=True``).

        Raises TransportError when the connection fails on the last attempt, RedirectError for
        a bad redirect.
        """
        policy = self.retry
        deadline = time.monotonic() + policy.deadline
        rereadable = body is None or isinstance(body, bytes) or callable(body)
        attempts = policy.attempts if (retry and rereadable) else 1
        last_exc: TransportError | None = None
        for attempt in range(attempts):
            final = attempt == attempts - 1
            try:
                resp = self._follow(method, url, headers or {}, body)
            except TLSError:
                raise
            except TransportError as exc:
                last_exc = exc
                if final:
                    raise
                delay = policy.backoff(attempt)
                if time.monotonic() + delay > deadline:
                    raise
                log.debug("retrying %s %s after %s (%.2fs)", method, redact(url), exc, delay)
                if on_retry:
                    on_retry(str(exc))
                self.sleep(delay)
                continue
            if final or not _retry_status(resp.status_code):
                return resp
            wait = parse_retry_after(resp.headers.get("Retry-After"))
            delay = policy.backoff(attempt) if wait is None else wait
            if wait is not None and wait > policy.max_retry_after:
                return resp
            if time.monotonic() + delay > deadline:
                return resp
            with contextlib.suppress(Exception):
                resp.raw.read(64 * 1024)
            resp.close()
            log.debug("retrying %s %s after status %d (%.2fs)", method, redact(url), resp.status_code, delay)
            if on_retry:
                on_retry(f"{resp.status_code} from {redact(url)}")
            self.sleep(delay)
        assert last_exc is not None
        raise last_exc

    def _follow(self, method: str, url: str, headers: Mapping[str, str], body: Body) -> requests.Response:
        origin = _origin(url)
        hdrs = dict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._send_once(method, url, hdrs, body)
            if resp.status_code not in (301, 302, 303, 307, 308) or "Location" not in resp.headers:
                return resp
            location = resp.headers["Location"]
            resp.close()
            nxt = urljoin(url, location)
            scheme = urlsplit(nxt).scheme
            if scheme not in ("http", "https"):
                raise RedirectError(
                    f"{method} {redact(url)}: redirect to a {scheme or 'relative'} URL refused"
                )
            if url.startswith("https://") and scheme == "http":
                raise RedirectError(
                    f"{method} {redact(url)}: redirect from https to http refused ({redact(nxt)})"
                )
            if _origin(nxt) != origin:
                # Never send the registry's credentials to another origin (blob storage, CDN).
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
            if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
                method, body = "GET", None
                hdrs = {
                    k: v
                    for k, v in hdrs.items()
                    if k.lower() not in ("content-length", "content-type", "content-range")
                }
            elif body is not None and not (isinstance(body, bytes) or callable(body)):
                raise RedirectError(f"{method} {redact(url)}: redirected, and the body cannot be re-sent")
            url = nxt
        raise RedirectError(f"{method}: more than {MAX_REDIRECTS} redirects (last {redact(url)})")


def _tls_handshake(host: str, *, timeout: float) -> None:
    """Connect to ``host`` ([ip6]:port, name:port or name) and complete a TLS handshake without
    verifying anything; raises OSError (ssl.SSLError included) when that fails."""
    parts = urlsplit(f"//{host}")
    name, port = parts.hostname or host, parts.port or 443
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((name, port), timeout=timeout) as sock:
        sni = None if _is_ip(name) else name
        with ctx.wrap_socket(sock, server_hostname=sni):
            pass


def _is_ip(name: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in name else socket.AF_INET, name)
    except OSError:
        return False
    return True


def _release(resp: requests.Response) -> None:
    """Close a response whose body does not matter, reading what is left of a small one first
    so its connection goes back to the pool instead of being closed."""
    with contextlib.suppress(Exception):
        resp.raw.read(64 * 1024, decode_content=False)
    resp.close()


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def _reason(exc: BaseException) -> str:
    """A short reason without URLs with secrets (requests messages repeat the URL)."""
    text = str(exc)
    inner: BaseException | None = exc
    for _ in range(5):
        if inner is None:
            break
        args = getattr(inner, "args", ())
        if args and isinstance(args[0], BaseException):
            inner = args[0]
            continue
        reason = getattr(inner, "reason", None)
        if isinstance(reason, BaseException):
            inner = reason
            continue
        break
    if inner is not None and inner is not exc:
        text = str(inner)
    if "Caused by" in text:
        text = text.split("Caused by", 1)[1]
    text = re.sub(r"^\w*Connection(Pool)?\([^)]*\):\s*", "", text.strip(" ()'\""))
    text = text.replace("Failed to establish a new connection: ", "")
    for marker in ("object at 0x",):
        if marker in text:
            text = text.split(":", 1)[-1].strip()
    return text[:200] or type(exc).__name__


@contextlib.contextmanager
def closing(resp: requests.Response) -> Iterator[requests.Response]:
    try:
        yield resp
    finally:
        resp.close()
