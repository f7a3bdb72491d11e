"""Checkpoints are C2SP signed notes, byte for byte what Go's golang.org/x/mod/sumdb/note makes:
its published key and signature are the test vector; and a checkpoint verifies only with its key."""

from __future__ import annotations

import pytest

from sluice.audit import NoteError, Signer, Verifier
from sluice.audit.note import open_checkpoint, sign_checkpoint, split_notes

SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
SIGNED = TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"


def test_the_go_reference_key_and_signature_are_reproduced_exactly():
    signer = Signer.parse(SKEY)
    assert signer.text() == SKEY
    assert signer.verifier().text() == VKEY == Verifier.parse(VKEY).text()
    assert signer.sign(TEXT) == SIGNED


def test_a_checkpoint_opens_with_its_key_only_and_not_once_altered():
    signer = Signer.generate("example.org/log")
    cp = sign_checkpoint(signer, "example.org/log", 7, bytes(range(32)))
    assert cp.note.startswith("example.org/log\n7\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n\n\u2014 example.org/log ")
    got = open_checkpoint(cp.note, signer.verifier())
    assert (got.origin, got.size, got.root) == ("example.org/log", 7, bytes(range(32)))
    with pytest.raises(NoteError, match="another key"):
        open_checkpoint(cp.note, Signer.generate("example.org/log").verifier())
    with pytest.raises(NoteError, match="forged"):
        open_checkpoint(cp.note.replace("\n7\n", "\n8\n"), signer.verifier())
    assert split_notes(cp.note + cp.note) == [cp.note, cp.note]


def test_generated_keys_round_trip_even_with_plus_signs_in_their_base64():
    for _ in range(40):
        s = Signer.generate("k")
        assert Signer.parse(s.text()).verifier().text() == Verifier.parse(s.verifier().text()).text()
