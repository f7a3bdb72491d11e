"""Workload identity from client certificates (mTLS): a certificate the listener verified in its
handshake is mapped to a sluice identity by the federation rules that map JWT-SVIDs and Kubernetes
tokens (``federation.identity_for``), so a workload calls with its X.509-SVID and holds no key.

A certificate is read once (``read``, shared by the connections that show it); each request then looks its identity up in the
live registry (``PeerCertificate.authenticate``), exactly as a key's is: disabling the identity refuses
the connection's next request, on this replica at once and on the others when they learn of the change
(the same path a key's revocation takes, ``sync``). The certificate's notAfter bounds the credential, so
a keep-alive connection opened before it is refused after it.
"""

from __future__ import annotations

import hashlib

from cryptography import x509

from ..core import clock
from ..core.config import FederationRule
from ..core.errors import Unauthenticated
from ..core.types import Identity
from .federation import identity_for
from .principal import Principal
from .registry import CredentialRegistry

SPIFFE = "spiffe://"


def claims_of(cert: x509.Certificate) -> dict[str, str]:
    """What rules match on: ``sub`` (the SPIFFE ID of an X.509-SVID, as a JWT-SVID's ``sub``; otherwise
    the subject), ``subject`` (RFC 4514), ``cn``, and ``trust_domain`` of a SPIFFE ID.

    A certificate with more than one SPIFFE ID is no SVID (the spec allows exactly one): it gets no
    ``sub`` nor ``trust_domain``, so no rule on them can match it."""
    subject = cert.subject.rfc4514_string()
    claims = {"subject": subject}
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if cn and isinstance(cn[0].value, str):
        claims["cn"] = cn[0].value
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ids = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.lower().startswith(SPIFFE)]
    except x509.ExtensionNotFound:
        ids = []
    if len(ids) == 1:
        claims["sub"] = ids[0]
        claims["trust_domain"] = ids[0][len(SPIFFE):].split("/", 1)[0]
    elif not ids:
        claims["sub"] = subject
    return claims


_UNMAPPED = "The client certificate is not mapped to an enabled identity."


class PeerCertificate:
    """One connection's verified client certificate: the identity its rules name, and until when it holds."""

    __slots__ = ("name", "not_after", "credential", "_identity", "_principal")

    def __init__(self, name: str | None, not_after: float, credential: str) -> None:
        self.name = name  # the identity the rules map it to, or None
        self.not_after = not_after
        self.credential = credential  # ``cert:`` and its SHA-256 fingerprint's first 16 hex digits
        self._identity: Identity | None = None
        self._principal: Principal | None = None

    def authenticate(self, registry: CredentialRegistry) -> Principal:
        """The principal of the identity this certificate maps to, as the registry holds it now; else 401."""
        if self.name is None:
            raise Unauthenticated(_UNMAPPED, code="invalid_client_certificate")
        identity = registry.identity_by_name(self.name)
        if identity is None:  # disabled (or never created): said exactly as an unmapped certificate
            raise Unauthenticated(_UNMAPPED, code="invalid_client_certificate")
        principal = self._principal
        if identity is not self._identity or principal is None:
            # first request, or the identity changed (scopes, roles, expiry) or was reloaded: built once per change
            principal = self._principal = Principal(identity, None, expires_at=self.not_after,
                                                    credential_id=self.credential)
            self._identity = identity
        if clock.now() >= principal.expires_at:  # type: ignore[operator]  # the notAfter, or the identity's expiry
            raise Unauthenticated("The client certificate (or its identity) has expired.",
                                  code="expired_client_certificate")
        registry.touch(self.credential)
        return principal


_SEEN_MAX = 4096  # certificates read, per listener: a workload's many connections share one reading


class CertificateIdentities:
    """A listener's mapping of verified client certificates to identities (its ``client_certs`` rules)."""

    def __init__(self, rules: list[FederationRule]) -> None:
        self._rules = rules
        # reading a certificate's names costs 0.4-0.7 ms on a loaded machine (cryptography parses every
        # extension): once per certificate, not per connection; only certificates the handshake verified
        # reach here, and the bound holds anyway
        self._seen: dict[bytes, PeerCertificate] = {}

    def read(self, der: bytes) -> PeerCertificate:
        """Once per connection: the certificate's claims mapped by the rules (the handshake verified it)."""
        got = self._seen.get(der)
        if got is None:
            cert = x509.load_der_x509_certificate(der)
            name = identity_for(self._rules, claims_of(cert))
            got = PeerCertificate(name, cert.not_valid_after_utc.timestamp(),
                                  "cert:" + hashlib.sha256(der).hexdigest()[:16])
            if len(self._seen) >= _SEEN_MAX:
                self._seen.clear()
            self._seen[der] = got
        return got
