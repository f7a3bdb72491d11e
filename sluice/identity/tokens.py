"""Short-lived access tokens: minted by token exchange, signed ES256 with rotating keys,
verified on the data plane at the cost of a dictionary lookup once seen.

A token names its identity and the credential it was minted from; revoking that key or
disabling the identity kills the token on its next use, cached or not.
"""

from __future__ import annotations

import base64
import math
import os
import uuid
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet

from ..core import clock
from ..core.config import Tokens
from ..core.errors import Conflict, Unauthenticated
from ..core.types import ChangeEvent, Identity, SigningKey
from ..store import Store, Writes
from .principal import Principal, Scopes, scopes_for
from .registry import CredentialRegistry
from .service import Actor

ALG = "ES256"
_NEVER = float("inf")
_ATTEMPTS = 5
AUTOMATIC = Actor("auto-rotation")  # the actor of a rotation the keyring made because no key was current


def unknown_identity() -> Unauthenticated:
    """The answer to a token of ours whose identity is not known, and to one on a listener that does not serve it."""
    return Unauthenticated("The identity behind this token is disabled or unknown.", code="identity_disabled")


def looks_like_jwt(token: str) -> bool:
    """A compact JWS: three base64url parts, a JSON header."""
    return token.startswith("eyJ") and token.count(".") == 2


class Sealer:
    """AES-GCM under a key derived from the pepper: how private signing keys (and, under a key of
    their own ``purpose``, held tool calls' arguments) rest in the store."""

    def __init__(self, pepper: bytes, purpose: bytes = b"sluice signing keys v1") -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(pepper)
        self._aead = AESGCM(key)

    def seal(self, data: bytes) -> str:
        nonce = os.urandom(12)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, data, None)).decode()

    def open(self, sealed: str) -> bytes:
        raw = base64.b64decode(sealed)
        return self._aead.decrypt(raw[:12], raw[12:], None)


class Keyring:
    """The signing keys: one current, older ones published until their last token expires."""

    def __init__(self, store: Store, sealer: Sealer, cfg: Tokens) -> None:
        self._store = store
        self._sealer = sealer
        self._cfg = cfg
        self._current: ECKey | None = None
        self._public = KeySet([])
        self._jwks: dict[str, Any] = {"keys": []}

    async def load(self) -> None:
        """Read the keys from the store; make a new current one if none is current (an automatic rotation:
        of replicas or workers finding it due together, one rotates and the others read its key)."""
        for attempt in range(_ATTEMPTS):
            version = await self._store.identity_version()  # read before the keys: a rotation after moves it
            now = clock.now()
            stored = await self._store.list_signing_keys()
            if any(k.retire_at > now for k in stored):
                self._install(stored, now)
                return
            try:
                # the last attempt rotates whatever else changed meanwhile: a busy store must not leave us keyless
                await self.rotate(AUTOMATIC, expect_version=version if attempt < _ATTEMPTS - 1 else None)
                return
            except Conflict as exc:
                if exc.code != "state_changed":
                    raise

    async def rotate(self, actor: Actor, *, expect_version: int | None = None) -> str:
        """Start signing with a new key; the old one stays published for verification. The keys and
        the change recording who rotated them are written in one transaction."""
        now = clock.now()
        kid = f"sk-{uuid.uuid4().hex[:12]}"
        key = ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig", "alg": ALG}, private=True)
        writes, retired = Writes(), []
        for old in await self._store.list_signing_keys():
            if old.retire_at > now:
                old.retire_at = now
                old.expires_at = now + self._cfg.max_ttl_s + 60
                writes.put_signing_key(old)
                retired.append(old.kid)
        writes.put_signing_key(SigningKey(
            kid=kid, alg=ALG, private_sealed=self._sealer.seal(key.as_pem(private=True)),
            public_jwk=key.as_dict(private=False), created_at=now,
            retire_at=now + self._cfg.signing_key_rotation_s,
            expires_at=now + self._cfg.signing_key_rotation_s + self._cfg.max_ttl_s + 60,
        ))
        event = ChangeEvent(id=uuid.uuid4().hex, ts=now, actor=actor.name, action="signing-key.rotate", target=kid,
                            source_ip=actor.source_ip, detail={"retired": retired})
        await self._store.apply(writes, event, expect_version=expect_version)
        self._install(await self._store.list_signing_keys(), now)
        return kid

    def _install(self, stored: list[SigningKey], now: float) -> None:
        published = [k for k in stored if k.expires_at > now]
        current = next(k for k in stored if k.retire_at > now)
        self._current = ECKey.import_key(self._sealer.open(current.private_sealed),
                                         parameters={"kid": current.kid, "use": "sig", "alg": ALG})
        self._public = KeySet([ECKey.import_key(k.public_jwk) for k in published])
        self._jwks = {"keys": [k.public_jwk for k in published]}

    async def maintain(self) -> None:
        """Periodic: rotate when the current key is due, else pick up keys other replicas made."""
        await self.load()

    @property
    def current(self) -> ECKey:
        assert self._current is not None, "keyring not loaded"
        return self._current

    @property
    def public(self) -> KeySet:
        return self._public

    def jwks(self) -> dict[str, Any]:
        return self._jwks


class _Scopes2:
    """Both the identity's scopes and the token's narrower ones must allow a model."""

    __slots__ = ("_a", "_b")

    def __init__(self, a: Scopes, b: Scopes) -> None:
        self._a, self._b = a, b

    def allows(self, model: str) -> bool:
        return self._a.allows(model) and self._b.allows(model)


class _Seen:
    """A verified token: its claims that matter, and the principal built from them and its identity."""

    __slots__ = ("principal", "identity", "identity_id", "credential", "exp", "scope", "ends", "aud")

    def __init__(self, identity: Identity, credential: str, exp: float, scope: list[str] | None, aud: str) -> None:
        self.credential, self.exp, self.scope, self.identity_id = credential, exp, scope, identity.id
        self.aud = aud
        self.bind(identity)

    def bind(self, identity: Identity) -> None:
        """(Re)build the principal for the identity as it is now; the token's own expiry still holds."""
        principal = Principal(identity, None, expires_at=self.exp, credential_id=self.credential)
        if self.scope is not None:
            principal.scopes = _Scopes2(principal.scopes, scopes_for(self.scope))  # type: ignore[assignment]
        self.principal, self.identity = principal, identity
        self.ends: float = principal.expires_at if principal.expires_at is not None else _NEVER


class TokenService:
    """Mints access tokens and checks them on the data plane."""

    def __init__(self, keyring: Keyring, registry: CredentialRegistry, cfg: Tokens) -> None:
        self._keyring = keyring
        self._registry = registry
        self._cfg = cfg
        self._claims = jwt.JWTClaimsRegistry(
            # aud: one string, checked per request against the audience of the endpoint (``authenticate``)
            leeway=5, iss={"essential": True, "value": cfg.issuer}, aud={"essential": True},
            exp={"essential": True}, sub={"essential": True}, cred={"essential": True},
        )
        # verified tokens, oldest first: bounded, so minting many tokens cannot grow memory (a plain
        # dict evicting the oldest insert: a hit costs no reordering; a hot token evicted is verified again)
        self._seen: dict[str, _Seen] = {}
        self._seen_max = cfg.cache_entries

    @property
    def audience(self) -> str:
        return self._cfg.audience

    def jwks(self) -> dict[str, Any]:
        return self._keyring.jwks()

    def mint(self, identity: Identity, credential: str, *, models: list[str] | None = None,
             ttl_s: float | None = None, not_after: float | None = None, audience: str | None = None) -> tuple[str, int]:
        """A signed token for an identity, bound to its environment and (optionally) fewer models.

        Its ``aud`` is the gateway's own audience, or ``audience``: a narrower resource (RFC 8707) such as an
        MCP endpoint's canonical URI, where alone it is accepted.

        It expires no later than ``not_after`` (its key's expiry or rotation-overlap end) nor
        its identity's expiry: a token never outlives what it was minted from.
        """
        now = int(clock.now())
        exp = now + int(min(ttl_s or self._cfg.default_ttl_s, self._cfg.max_ttl_s))
        for end in (not_after, identity.expires_at):
            if end is not None:
                exp = min(exp, math.floor(end))
        if exp <= now:
            raise Unauthenticated("The credential or its identity has expired.", code="invalid_grant")
        ttl = exp - now
        claims: dict[str, Any] = {
            "iss": self._cfg.issuer, "aud": audience or self._cfg.audience, "sub": identity.id, "iat": now, "nbf": now,
            "exp": exp, "jti": uuid.uuid4().hex, "env": identity.environment, "cred": credential,
        }
        if models is not None:
            claims["scope"] = " ".join(models)
        key = self._keyring.current
        token = jwt.encode({"alg": ALG, "kid": key.kid, "typ": "at+jwt"}, claims, key, algorithms=[ALG])
        return token, ttl

    def mint_service(self, audience: str, subject: str, ttl_s: float) -> tuple[str, int]:
        """A token sluice signs for itself, to show a service it calls (an MCP server's own credential): ``iss``
        sluice's issuer, ``aud`` that service, ``sub`` sluice's name for itself there. It carries no identity and
        no ``cred``, so no endpoint of sluice's accepts it. (token, expiry as epoch seconds)"""
        now = int(clock.now())
        exp = now + int(min(ttl_s, self._cfg.max_ttl_s))  # the signing key stays published that long after rotating
        claims = {"iss": self._cfg.issuer, "aud": audience, "sub": subject, "iat": now, "nbf": now, "exp": exp,
                  "jti": uuid.uuid4().hex, "client_id": self._cfg.issuer}
        key = self._keyring.current
        return jwt.encode({"alg": ALG, "kid": key.kid, "typ": "at+jwt"}, claims, key, algorithms=[ALG]), exp

    def authenticate(self, token: str, audience: str | None = None) -> Principal:
        """The principal behind a token of ours minted for ``audience`` (default: the gateway's own), or
        ``Unauthenticated``; cached after the first check."""
        seen = self._seen.get(token)
        now = clock.now()
        if seen is None:
            seen = self._verify(token, now)
        if seen.aud != (audience or self._cfg.audience):  # RFC 8707: a token for another resource is no token here
            raise Unauthenticated("The access token was minted for another audience; ask /v1/token for one whose "
                                  "audience (resource) is this endpoint.", code="invalid_audience")
        identity = self._registry.identity(seen.identity_id)
        if identity is None:
            raise Unauthenticated("The identity behind this token is disabled.", code="identity_disabled")
        if identity is not seen.identity:
            if identity != seen.identity:
                seen.bind(identity)  # scopes, roles, team or expiry changed since
            seen.identity = identity  # a reload made an equal copy: compare by identity next time
        if now >= seen.ends:  # the token's exp, or its identity's expiry if earlier
            raise Unauthenticated("The access token (or its identity) has expired.", code="expired_token")
        cred = seen.credential
        if not cred.startswith("fed:") and not self._registry.key_is_live(cred, now):
            raise Unauthenticated("The key this token was minted from has been revoked or has expired.",
                                  code="token_revoked")
        self._registry.touch(cred)
        return seen.principal

    def _verify(self, token: str, now: float) -> _Seen:
        try:
            decoded = jwt.decode(token, self._keyring.public, algorithms=[ALG])
            self._claims.validate(decoded.claims)
        except JoseError as exc:
            raise Unauthenticated(f"The access token is invalid: {exc.description or exc.error}.", code="invalid_token") from None
        except ValueError:
            raise Unauthenticated("The access token is malformed.", code="invalid_token") from None
        c = decoded.claims
        identity = self._registry.identity(c["sub"])
        if identity is None:
            raise unknown_identity()
        if c.get("env") != identity.environment:
            raise Unauthenticated("The token's environment does not match its identity.", code="invalid_token")
        if not isinstance(c["aud"], str):
            raise Unauthenticated("The access token's audience is not one of ours.", code="invalid_token")
        seen = _Seen(identity, str(c["cred"]), float(c["exp"]), str(c["scope"]).split() if "scope" in c else None,
                     c["aud"])
        if self._seen_max:
            if len(self._seen) >= self._seen_max:
                del self._seen[next(iter(self._seen))]
            self._seen[token] = seen
        return seen
