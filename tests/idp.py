"""A real OIDC identity provider for tests: its own keys, discovery document and JWKS, served
over HTTP on a loopback port, and ID tokens signed with PyJWT."""

from __future__ import annotations

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


@contextmanager
def running_idp() -> Iterator[IdentityProvider]:
    provider: IdentityProvider | None = None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            assert provider is not None
            if self.path == "/.well-known/openid-configuration":
                body = {
                    "issuer": provider.issuer,
                    "jwks_uri": f"{provider.issuer}/jwks",
                    "id_token_signing_alg_values_supported": ["RS256"],
                }
            elif self.path == "/jwks":
                provider.jwks_fetches += 1
                time.sleep(provider.jwks_delay)
                body = provider.jwks()
            else:
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
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
