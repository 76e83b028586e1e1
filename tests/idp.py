"""A real OIDC identity provider for tests: its own keys, discovery document and JWKS, served
over HTTP on a loopback port, and ID tokens signed with PyJWT."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


class IdentityProvider:
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.keys: list[tuple[str, rsa.RSAPrivateKey]] = []
        self.jwks_fetches = 0
        self.jwks_delay = 0.0  # seconds each JWKS answer waits: a slow provider
        # A provider gone wrong: raw bodies served instead of the real documents, a status
        # other than 200, answers without Content-Length (the body ends when the connection
        # closes), and how often discovery was asked for.
        self.discovery_fetches = 0
        self.discovery_delay = 0.0
        self.discovery_raw: bytes | None = None
        self.jwks_raw: bytes | None = None
        self.status = 200
        self.send_length = True
        self.rotate()

    def rotate(self) -> str:
        """A new signing key, published first in the JWKS (the old one stays published)."""
        kid = uuid.uuid4().hex[:12]
        self.keys.insert(0, (kid, rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        return kid

    def drop_old_keys(self) -> None:
        self.keys = self.keys[:1]

    def jwks(self) -> dict[str, Any]:
        published = []
        for kid, key in self.keys:
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            published.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": published}

    def id_token(self, sub: str, aud: str = "desktop-app", **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": self.issuer, "sub": sub, "aud": aud, "iat": now, "exp": now + 300}
        payload.update(claims)
        kid, key = self.keys[0]
        return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})

    def sign_raw(self, payload: bytes) -> str:
        """A token over exactly these payload bytes, e.g. JSON no encoder would write."""
        kid, key = self.keys[0]
        return jwt.api_jws.encode(payload, key, algorithm="RS256", headers={"kid": kid})


@contextmanager
def running_idp() -> Iterator[IdentityProvider]:
    provider: IdentityProvider | None = None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            assert provider is not None
            raw: bytes | None
            if self.path == "/.well-known/openid-configuration":
                provider.discovery_fetches += 1
                time.sleep(provider.discovery_delay)
                body: Any = {
                    "issuer": provider.issuer,
                    "jwks_uri": f"{provider.issuer}/jwks",
                    "id_token_signing_alg_values_supported": ["RS256"],
                }
                raw = provider.discovery_raw
            elif self.path == "/jwks":
                provider.jwks_fetches += 1
                time.sleep(provider.jwks_delay)
                body = provider.jwks()
                raw = provider.jwks_raw
            else:
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps(body).encode() if raw is None else raw
            self.send_response(provider.status)
            self.send_header("Content-Type", "application/json")
            if provider.send_length:
                self.send_header("Content-Length", str(len(data)))
            else:
                self.close_connection = True
            self.end_headers()
            # The client may stop reading (a body over its size cap).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(data)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    provider = IdentityProvider(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
