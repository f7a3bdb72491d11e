"""Workload identity federation: tokens from trusted issuers (Kubernetes service accounts,
SPIFFE JWT-SVIDs, CI OIDC) are verified against the issuer's published keys and mapped by
claim rules to a sluice identity, so a workload never holds a sluice key."""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ..core.config import FederationRule, TrustedIssuer
from ..core.errors import Unauthenticated

log = logging.getLogger("sluice.federation")
_JWKS_MAX_BYTES = 256 * 1024  # a key set is a few KiB; a hostile or broken issuer cannot make us buffer more
_FORCED_EVERY_S = 10.0  # an unknown kid refreshes at most this often, so bad tokens cannot hammer the issuer
_FAILED_RETRY_S = 5.0  # after a failed fetch, callers get 'unavailable' at once for this long (negative cache)


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a compact JWT, read without trusting it (to find its issuer)."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, RecursionError):  # RecursionError: a payload nested too deep for json
        raise Unauthenticated("The subject token is not a JWT.", code="invalid_token") from None
    if not isinstance(data, dict):
        raise Unauthenticated("The subject token is not a JWT.", code="invalid_token")
    return data


class Issuer:
    """One trusted issuer: its key set (refreshed), its audience, its algorithms, its rules."""

    def __init__(self, cfg: TrustedIssuer) -> None:
        self.cfg = cfg
        self._keys: KeySet | None = None
        self._fetched = -1e9  # last successful fetch (monotonic)
        self._attempted = -1e9  # last fetch attempt, successful or not
        self._lock = asyncio.Lock()
        self.fetches = 0
        self._claims = jwt.JWTClaimsRegistry(
            leeway=int(cfg.leeway_s), iss={"essential": True, "value": cfg.issuer},
            aud={"essential": True, "value": cfg.audience}, exp={"essential": True},
        )

    def _due(self, force: bool) -> bool:
        """A fetch is due: the keys are missing or old (or a kid is unknown), and no attempt was just made."""
        now = time.monotonic()
        if now - self._attempted < (_FORCED_EVERY_S if force and self._keys is not None else _FAILED_RETRY_S):
            return False
        return self._keys is None or now - self._fetched > self.cfg.jwks_refresh_s or force

    async def keys(self, *, force: bool = False) -> KeySet:
        if self._due(force):
            async with self._lock:
                # decided again under the lock: the callers that queued behind one fetch use its result
                if self._due(force):
                    await self._load()
        if self._keys is None:
            raise Unauthenticated("The issuer's keys cannot be fetched right now; retry later.", code="issuer_unavailable")
        return self._keys

    async def _load(self) -> None:
        self._attempted = time.monotonic()
        self.fetches += 1
        try:
            if self.cfg.jwks_file is not None:
                data = json.loads(Path(self.cfg.jwks_file).read_text())
            else:
                data = json.loads(await self._fetch(self.cfg.jwks_url))  # type: ignore[arg-type]
            self._keys = KeySet.import_key_set(data)
            self._fetched = time.monotonic()
        except (OSError, ValueError, aiohttp.ClientError, asyncio.TimeoutError, JoseError) as exc:
            log.warning("cannot load the key set of issuer %s: %s", self.cfg.name, type(exc).__name__)

    @staticmethod
    async def _fetch(url: str) -> bytes:
        """The key set's bytes, refusing one larger than ``_JWKS_MAX_BYTES`` (however it is framed)."""
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url, allow_redirects=False) as r:
            r.raise_for_status()
            if (r.content_length or 0) > _JWKS_MAX_BYTES:
                raise ValueError("key set too large")
            body = bytearray()
            async for chunk in r.content.iter_chunked(65536):
                body += chunk
                if len(body) > _JWKS_MAX_BYTES:
                    raise ValueError("key set too large")
            return bytes(body)

    async def verify(self, token: str) -> dict[str, Any]:
        """Signature, algorithm, issuer, audience and times; the verified claims."""
        for attempt in (0, 1):
            keys = await self.keys(force=attempt == 1)
            try:
                decoded = jwt.decode(token, keys, algorithms=list(self.cfg.algorithms))
            except JoseError as exc:
                if attempt == 0 and "key" in (exc.description or exc.error or "").lower():
                    continue  # perhaps a rotated key: refresh once
                raise Unauthenticated(f"The subject token was refused: {exc.description or exc.error}.", code="invalid_token") from None
            except ValueError:
                raise Unauthenticated("The subject token is malformed.", code="invalid_token") from None
            try:
                self._claims.validate(decoded.claims)
            except JoseError as exc:
                raise Unauthenticated(f"The subject token was refused: {exc.description or exc.error}.", code="invalid_token") from None
            return decoded.claims
        raise Unauthenticated("The subject token was refused.", code="invalid_token")

    def identity_for(self, claims: dict[str, Any]) -> str:
        """The identity named by the first rule whose claims all match."""
        name = identity_for(self.cfg.rules, claims)
        if name is None:
            raise Unauthenticated("No sluice identity is mapped to this workload.", code="unmapped_workload")
        return name


def identity_for(rules: list[FederationRule], claims: Mapping[str, Any]) -> str | None:
    """The identity named by the first rule whose claims all match (exact or glob values), or None.
    Workload tokens and client certificates (``certs``) are mapped by this one function."""
    for rule in rules:
        if all(isinstance(claims.get(k), str) and fnmatch.fnmatchcase(claims[k], v) for k, v in rule.match.items()):
            return rule.identity
    return None


class Federation:
    """The trusted issuers, by their ``iss``."""

    def __init__(self, issuers: list[TrustedIssuer]) -> None:
        self._by_iss = {i.issuer: Issuer(i) for i in issuers}

    def __bool__(self) -> bool:
        return bool(self._by_iss)

    def rules_of(self, name: str) -> list[FederationRule] | None:
        """The rules of the issuer called ``name`` (the config's ``name``), or None if none is."""
        return next((i.cfg.rules for i in self._by_iss.values() if i.cfg.name == name), None)

    async def warm(self) -> None:
        """Fetch every key set once at start (failures are retried on first use)."""
        await asyncio.gather(*(i.keys() for i in self._by_iss.values()), return_exceptions=True)

    async def resolve(self, token: str) -> tuple[str, str]:
        """(identity name, issuer name) for a verified workload token, or ``Unauthenticated``."""
        iss = unverified_claims(token).get("iss")
        issuer = self._by_iss.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise Unauthenticated("The subject token's issuer is not trusted.", code="untrusted_issuer")
        claims = await issuer.verify(token)
        return issuer.identity_for(claims), issuer.cfg.name
