"""The issuer's signing keys: storage encrypted at rest, staged rotation, JWKS, discovery."""
