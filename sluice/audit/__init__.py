"""The tamper-evident audit log: a Merkle log (RFC 6962 hashing) of every control-plane action,
written in the transaction of the change, with Ed25519-signed checkpoints and a verifier."""

from .journal import MerkleJournal
from .log import AuditLog, load_signer
from .note import Checkpoint, NoteError, Signer, Verifier
from .verify import Report, Row, verify

__all__ = ["AuditLog", "Checkpoint", "MerkleJournal", "NoteError", "Report", "Row", "Signer", "Verifier",
           "load_signer", "verify"]
