"""Checkpoints as C2SP signed notes (c2sp.org/signed-note, c2sp.org/tlog-checkpoint), Ed25519.

A checkpoint body is ``origin\\nsize\\nbase64(root)\\n``; the note appends a blank line and one
line per signature: ``— name base64(key_hash[4] || signature)``. Keys use the note text formats:
``PRIVATE+KEY+name+hash+base64(0x01 || seed)`` and the verifier key ``name+hash+base64(0x01 || public)``,
where hash is the first four bytes of SHA-256(name || "\\n" || 0x01 || public), in hex.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

_ED25519 = b"\x01"
_DASH = "\u2014 "
_NAME = re.compile(r"^[^\s+]+$")


class NoteError(ValueError):
    """A key or note that cannot be parsed, or a signature that does not verify."""


def _key_hash(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + public).digest()[:4]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Verifier:
    """A named Ed25519 public key and its four-byte key hash."""

    name: str
    key_hash: bytes
    public: Ed25519PublicKey

    @classmethod
    def parse(cls, text: str) -> Verifier:
        try:
            name, hexhash, b64 = text.strip().split("+", 2)
            raw = base64.b64decode(b64, validate=True)
        except ValueError:
            raise NoteError("a verifier key is name+hash+base64") from None
        if not _NAME.match(name) or len(raw) != 33 or raw[:1] != _ED25519:
            raise NoteError("not an Ed25519 verifier key")
        public = raw[1:]
        if _key_hash(name, public).hex() != hexhash:
            raise NoteError("the verifier key's hash does not match its name and key")
        return cls(name, bytes.fromhex(hexhash), Ed25519PublicKey.from_public_bytes(public))

    def text(self) -> str:
        raw = _raw_public(self.public)
        return f"{self.name}+{self.key_hash.hex()}+{base64.b64encode(_ED25519 + raw).decode()}"


@dataclass(frozen=True)
class Signer:
    """A named Ed25519 private key."""

    name: str
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls, name: str) -> Signer:
        if not _NAME.match(name):
            raise NoteError("a key name has no spaces and no '+'")
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def parse(cls, text: str) -> Signer:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("a signing key is PRIVATE+KEY+name+hash+base64")
        try:
            raw = base64.b64decode(parts[4], validate=True)
        except ValueError:
            raise NoteError("the signing key's key is not base64") from None
        if len(raw) != 33 or raw[:1] != _ED25519:
            raise NoteError("not an Ed25519 signing key")
        signer = cls(parts[2], Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.verifier().key_hash.hex() != parts[3]:
            raise NoteError("the signing key's hash does not match its name and key")
        return signer

    def text(self) -> str:
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        seed = self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return f"PRIVATE+KEY+{self.name}+{self.verifier().key_hash.hex()}+{base64.b64encode(_ED25519 + seed).decode()}"

    def verifier(self) -> Verifier:
        public = self.private.public_key()
        return Verifier(self.name, _key_hash(self.name, _raw_public(public)), public)

    def sign(self, body: str) -> str:
        """The signed note: body, blank line, one signature line."""
        if not body.endswith("\n"):
            raise NoteError("a note body ends with a newline")
        sig = self.private.sign(body.encode())
        return f"{body}\n{_DASH}{self.name} {base64.b64encode(self.verifier().key_hash + sig).decode()}\n"


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: origin, size and root hash, with the signed note it came in."""

    origin: str
    size: int
    root: bytes
    note: str = ""

    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"


def sign_checkpoint(signer: Signer, origin: str, size: int, root: bytes) -> Checkpoint:
    body = Checkpoint(origin, size, root).body()
    return Checkpoint(origin, size, root, signer.sign(body))


def open_checkpoint(note: str, verifier: Verifier) -> Checkpoint:
    """Parse a signed checkpoint and check it carries a valid signature by ``verifier``; NoteError if not."""
    body, sep, sigs = note.partition("\n\n")
    if not sep:
        raise NoteError("a signed note has a blank line before its signatures")
    body += "\n"
    lines = body.split("\n")
    if len(lines) < 4:
        raise NoteError("a checkpoint has an origin, a size and a root hash")
    try:
        size = int(lines[1])
        root = base64.b64decode(lines[2], validate=True)
    except ValueError:
        raise NoteError("the checkpoint's size or root hash is malformed") from None
    if size < 0 or len(root) != 32 or not lines[1].isdigit():
        raise NoteError("the checkpoint's size or root hash is malformed")
    found_name = False
    for line in sigs.splitlines():
        if not line.startswith(_DASH):
            raise NoteError("a signature line starts with an em dash")
        name, _, b64 = line[len(_DASH):].rpartition(" ")
        try:
            raw = base64.b64decode(b64, validate=True)
        except ValueError:
            raise NoteError("a signature is not base64") from None
        if name != verifier.name or raw[:4] != verifier.key_hash:
            continue
        found_name = True
        try:
            verifier.public.verify(raw[4:], body.encode())
        except InvalidSignature:
            raise NoteError(f"the signature by {name} does not verify: the checkpoint was forged or altered") from None
        return Checkpoint(lines[0], size, root, note)
    if found_name:
        raise NoteError("no valid signature")
    raise NoteError(f"the checkpoint is not signed by the audit key {verifier.name}+{verifier.key_hash.hex()}"
                    " (signed by another key?)")


def split_notes(text: str) -> list[str]:
    """The notes in a file of notes written one after another (the append-only checkpoint sink)."""
    notes: list[str] = []
    cur: list[str] = []
    in_sigs = False
    for line in text.splitlines(keepends=True):
        if in_sigs and not line.startswith(_DASH):
            notes.append("".join(cur))
            cur, in_sigs = [], False
        if not in_sigs and line == "\n" and cur:
            in_sigs = True
        if line == "\n" and not cur:
            continue
        cur.append(line)
    if cur:
        notes.append("".join(cur))
    return notes
