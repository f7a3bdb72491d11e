"""A workload token issuer on loopback for tests: serves its JWKS over HTTP, mints tokens
(good ones and every kind of bad one)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from support import LoopbackServer, QuietHandler


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class LocalIssuer:
    """One RSA and one EC signing key, published at ``{url}/jwks``."""

    def __init__(self) -> None:
        self.rsa = RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig"}, private=True)
        self.ec = ECKey.generate_key("P-256", parameters={"kid": "ec-1", "use": "sig"}, private=True)
        self.jwks = {"keys": [self.rsa.as_dict(private=False), self.ec.as_dict(private=False)]}
        self.fetches = 0
        issuer = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path != "/jwks":
                    self.send_error(404)
                    return
                issuer.fetches += 1
                self.send_body(json.dumps(issuer.jwks).encode())

        self._http = LoopbackServer(Handler)
        self.url = self._http.url

    def stop(self) -> None:
        self._http.stop()

    def rotate_ec(self, kid: str) -> None:
        """Start signing ES256 with a new key, published beside the old one (an issuer's rotation)."""
        self.ec = ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig"}, private=True)
        self.jwks = {"keys": [*self.jwks["keys"], self.ec.as_dict(private=False)]}

    @staticmethod
    def stranger(claims: dict[str, Any], kid: str) -> str:
        """ES256 under a key nobody publishes, with a kid nobody publishes."""
        other = ECKey.generate_key("P-256", parameters={"kid": kid}, private=True)
        return jwt.encode({"alg": "ES256", "kid": kid, "typ": "JWT"}, claims, other, algorithms=["ES256"])

    @staticmethod
    def claims(iss: str, aud: str, sub: str, ttl: int = 300, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": iss, "aud": aud, "sub": sub, "iat": now, "nbf": now, "exp": now + ttl, **extra}

    def mint(self, claims: dict[str, Any], alg: str = "RS256") -> str:
        key = self.rsa if alg.startswith(("RS", "PS")) else self.ec
        return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])

    def forged(self, claims: dict[str, Any]) -> str:
        """Signed by a stranger's key that claims the issuer's kid."""
        other = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}, private=True)
        return jwt.encode({"alg": "RS256", "kid": "rsa-1"}, claims, other, algorithms=["RS256"])

    @staticmethod
    def unsigned(claims: dict[str, Any]) -> str:
        """``alg: none``."""
        return _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." + _b64(json.dumps(claims).encode()) + "."

    def hs256_with_public_key(self, claims: dict[str, Any]) -> str:
        """The classic confusion: HMAC keyed with the issuer's public RSA key."""
        head = _b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
        body = _b64(json.dumps(claims).encode())
        secret = self.rsa.as_pem(private=False)
        sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{_b64(sig)}"
