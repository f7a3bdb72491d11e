"""What an upstream MCP server is shown as ``Authorization``: its own credential, never a caller's.

One kind per server (``mcp.servers[]``):

- none: no ``Authorization`` header at all;
- ``credential_env``: ``Bearer`` and the value of that environment variable, read at start (unset: the start stops);
- ``credential: mint``: a token sluice signs itself with the keys of ``/v1/token`` (published at
  ``/.well-known/jwks.json``; ``TokenService.mint_service``): ``iss`` sluice's issuer, ``aud`` the server's
  ``url``, ``sub`` ``sluice:mcp:NAME``, living ``credential_ttl_s``. It is minted again once two thirds of its
  life have passed, so no request carries one about to expire. A token that cannot be minted fails the request
  (``mcp_upstream_error``): a server meant to get a credential never gets a request without one.

``ServerCredential.authorization()`` is the header value for the next request (None: send none); ``auth()``
is the same as an ``httpx2.Auth`` for the upstream's HTTP client, asked on every request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator

import httpx2

from ..core import clock
from ..core.errors import ConfigError, UpstreamError
from ..core.mcp_config import McpServer

log = logging.getLogger("sluice.mcp")
# (audience, subject, ttl_s) -> (token, expiry as epoch seconds): ``TokenService.mint_service``
Minter = Callable[[str, str, float], tuple[str, int]]
RENEW_AT = 2 / 3  # of a minted token's life


class ServerCredential:
    """The credential of one upstream server, as the value of its ``Authorization`` header."""

    __slots__ = ("_name", "_static", "_mint", "_audience", "_ttl_s", "_header", "_renew_at")

    def __init__(self, spec: McpServer, mint: Minter | None = None) -> None:
        self._name = spec.name
        self._static: str | None = None
        self._mint: Minter | None = None
        self._audience = spec.url or ""
        self._ttl_s = spec.credential_ttl_s
        self._header: str | None = None
        self._renew_at = 0.0
        if spec.credential_env:
            secret = os.environ.get(spec.credential_env)
            if not secret:  # fail closed: a server meant to get a credential never gets a call without one
                raise ConfigError(f"MCP server {spec.name!r}: the environment variable {spec.credential_env!r} is unset"
                                  f" - at `$.mcp.servers`")
            self._static = f"Bearer {secret}"
        elif spec.credential == "mint":
            if mint is None:
                raise ConfigError(f"MCP server {spec.name!r}: credential: mint needs sluice's token signer - at "
                                  f"`$.mcp.servers`")
            self._mint = mint

    def authorization(self) -> str | None:
        """The header value for the next request to the server; a minted token is renewed past two thirds of its life."""
        if self._mint is None:
            return self._static
        now = clock.now()
        if self._header is None or now >= self._renew_at:
            try:
                token, exp = self._mint(self._audience, f"sluice:mcp:{self._name}", self._ttl_s)
            except Exception as exc:  # the keyring not loaded, a key that cannot sign: no request goes without
                log.warning("mcp: server %s: its credential could not be minted (%s)", self._name, type(exc).__name__)
                raise UpstreamError(f"MCP server {self._name}: its credential could not be minted.",
                                    code="mcp_upstream_error") from None
            self._header = f"Bearer {token}"
            self._renew_at = now + (exp - now) * RENEW_AT
        return self._header

    def auth(self) -> httpx2.Auth | None:
        """The credential for an ``httpx2`` client (None: the server gets no ``Authorization`` header)."""
        return None if self._static is None and self._mint is None else _HeaderAuth(self.authorization)


class _HeaderAuth(httpx2.Auth):
    """Sets ``Authorization`` on every request from a function asked each time (so a renewed token is used)."""

    def __init__(self, value: Callable[[], str | None]) -> None:
        self._value = value

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        value = self._value()
        if value is not None:
            request.headers["Authorization"] = value
        yield request
