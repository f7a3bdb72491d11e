"""Who is calling: key format and hashing, the credential registry, roles, tokens, federation."""

from .certs import CertificateIdentities, PeerCertificate
from .exchange import TokenExchange
from .federation import Federation
from .keys import Hasher, KeyInfo, display, generate, inspect
from .principal import Principal, Scopes
from .registry import CredentialRegistry, unknown_key
from .served import Served
from .gate import RateGate, gate
from .service import SYSTEM, Actor, IdentityService
from .sync import IdentitySync
from .tokens import Keyring, Sealer, TokenService, looks_like_jwt, unknown_identity

__all__ = [
    "SYSTEM", "Actor", "CertificateIdentities", "CredentialRegistry", "Federation", "Hasher", "IdentityService",
    "IdentitySync", "KeyInfo", "Keyring", "PeerCertificate", "Principal", "RateGate", "Scopes", "Sealer", "Served",
    "TokenExchange", "TokenService", "display", "gate", "generate", "inspect", "looks_like_jwt", "unknown_identity",
    "unknown_key",
]
