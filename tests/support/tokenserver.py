"""A test token server for docker-registry's token auth: RS256 JWTs signed with ``cryptography``.

GET /token (Basic credentials optional, repeated ``scope=``) and the OAuth2 POST form
(``grant_type=password`` or ``refresh_token``) as the distribution token spec describes. The JWT
header carries the signing certificate in ``x5c``; the registry trusts it through its
``rootcertbundle``. Policy: a known user gets what it asks for; anonymous clients get ``pull`` on
repositories under ``public/`` only. ``post_status`` makes POST answer e.g. 405 (GHCR-like).
Every request is recorded (without secrets) so tests can assert scopes and methods.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenRequest:
    method: str
    user: str | None
    scopes: list[str]
    service: str
    grant_type: str = ""


class TokenServer:
    def __init__(
        self, directory: Path, *, users: dict[str, str], service: str, issuer: str, ttl: int = 300
    ) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.users = users
        self.service = service
        self.issuer = issuer
        self.ttl = ttl
        self.post_status: int | None = None
        self.requests: list[TokenRequest] = []
        self.refresh_tokens: dict[str, str] = {}
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .sign(self._key, hashes.SHA256())
        )
        self._cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.cert_path = directory / "token-signer.crt"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.realm = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._lock = threading.Lock()

    def start(self) -> TokenServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- tokens ----------------------------------------------------------------------------
    def grant(self, user: str | None, scopes: list[str]) -> list[dict[str, Any]]:
        access = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) < 3 or parts[0] != "repository":
                continue
            name, actions = ":".join(parts[1:-1]), parts[-1].split(",")
            if user is None:
                actions = [a for a in actions if a == "pull"] if name.startswith("public/") else []
            if actions:
                access.append({"type": "repository", "name": name, "actions": actions})
        return access

    def sign(self, user: str | None, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self._cert_der).decode()]}
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + self.ttl,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": self.grant(user, scopes),
        }
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        sig = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(sig)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        ts = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _basic_user(self) -> tuple[str | None, bool]:
                value = self.headers.get("Authorization", "")
                if not value.startswith("Basic "):
                    return None, True
                user, _, password = base64.b64decode(value[6:]).decode().partition(":")
                return (user, True) if ts.users.get(user) == password else (user, False)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                q = parse_qs(parts.query)
                user, ok = self._basic_user()
                scopes = [s for v in q.get("scope", []) for s in v.split(" ") if s]
                with ts._lock:
                    ts.requests.append(TokenRequest("GET", user, scopes, (q.get("service") or [""])[0]))
                if not ok:
                    return self._json(
                        401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}
                    )
                token = ts.sign(user, scopes)
                self._json(
                    200,
                    {
                        "token": token,
                        "access_token": token,
                        "expires_in": ts.ttl,
                        "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
                    },
                )

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(n).decode())
                grant = (form.get("grant_type") or [""])[0]
                scopes = [s for v in form.get("scope", []) for s in v.split(" ") if s]
                user: str | None = (form.get("username") or [None])[0]
                with ts._lock:
                    ts.requests.append(
                        TokenRequest("POST", user, scopes, (form.get("service") or [""])[0], grant)
                    )
                if ts.post_status is not None:
                    return self._json(ts.post_status, {"details": "method not allowed"})
                refresh = None
                if grant == "password":
                    password = (form.get("password") or [""])[0]
                    if user is None or ts.users.get(user) != password:
                        return self._json(401, {"error": "invalid_grant"})
                    refresh = secrets.token_hex(16)
                    with ts._lock:
                        ts.refresh_tokens[refresh] = user
                elif grant == "refresh_token":
                    with ts._lock:
                        user = ts.refresh_tokens.get((form.get("refresh_token") or [""])[0])
                    if user is None:
                        return self._json(401, {"error": "invalid_grant"})
                else:
                    return self._json(400, {"error": "unsupported_grant_type"})
                token = ts.sign(user, scopes)
                doc: dict[str, Any] = {"access_token": token, "expires_in": ts.ttl, "scope": " ".join(scopes)}
                if refresh:
                    doc["refresh_token"] = refresh
                self._json(200, doc)

        return Handler
