"""Who is calling: key format and hashing, the in-memory credential registry, identity operations."""

from .keys import Hasher, KeyInfo, display, generate, inspect
from .principal import Principal, Scopes
from .registry import CredentialRegistry
from .service import SYSTEM, Actor, IdentityService

__all__ = [
    "SYSTEM", "Actor", "CredentialRegistry", "Hasher", "IdentityService", "KeyInfo",
    "Principal", "Scopes", "display", "generate", "inspect",
]
