"""The tamper-evident audit log: a Merkle log (RFC 6962 hashing) of every control-plane action,
written in the transaction of the change, with Ed25519-signed checkpoints and a verifier."""

from .entry import digest as content_hash
from .journal import MerkleJournal
from .log import AuditLog, load_signer
from .note import Checkpoint, NoteError, Signer, Verifier
from .verify import Report, Row, verify

# content_hash: the one hash of a value's canonical JSON; a policy version cited by a data-plane decision
# record and the before/after of the audit entry that activated it are the same hash (docs/audit.md).
__all__ = ["AuditLog", "Checkpoint", "content_hash", "MerkleJournal", "NoteError", "Report", "Row", "Signer", "Verifier",
           "load_signer", "verify"]
