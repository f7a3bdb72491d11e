"""Key material: public keys and certificates are no secret; every private key is one, whole and streamed."""

from __future__ import annotations

import pytest

from corpus import PRIVATE_KEYS, PUBLIC_KEYS
from test_stream_guard import run

from sluice.guard import KINDS, Detector


def _body_lines(key: str) -> list[str]:
    """The lines of a key that are its own (armor headers and base64), not its BEGIN and END lines."""
    lines = key.replace("\\n", "\n").replace('"}', "\n").split("\n")
    return [line for line in lines if len(line) >= 8 and "-----" not in line]


@pytest.mark.parametrize("kind", ("all",) + KINDS)
def test_public_keys_and_certificates_pass_untouched_bodies_and_all(kind):
    # every detector at once, and each kind alone: no kind catches a base64 body by chance
    d = Detector() if kind == "all" else Detector([kind])
    for key in PUBLIC_KEYS:
        for text in (key, f"Here is our key:\n{key}\nPlease add it.", key.replace("\n", "\r\n")):
            assert d.find(text) == [], (kind, text[:60], [(f.kind, text[f.start:f.end][:24]) for f in d.find(text)])
            assert d.mask(text) == text


def test_every_private_key_flavour_is_one_finding_armor_headers_and_all():
    d = Detector()
    for key in PRIVATE_KEYS:
        masked = d.mask(key)
        assert [f.kind for f in d.find(key)] == ["private_key"], key[:40]
        if not key.startswith("{"):
            assert masked == "[REDACTED:private_key]", masked
        assert not [line for line in _body_lines(key) if line in masked], masked


def test_a_public_key_beside_a_private_key_stays_and_the_private_key_is_masked():
    d = Detector()
    public, private = PUBLIC_KEYS[1], PRIVATE_KEYS[1]
    text = f"{public}\n{private}\n{PUBLIC_KEYS[3]}\nssh: {PUBLIC_KEYS[6]}"
    assert d.mask(text) == f"{public}\n[REDACTED:private_key]\n{PUBLIC_KEYS[3]}\nssh: {PUBLIC_KEYS[6]}"


def test_a_secret_inside_public_key_armor_is_still_found():
    # the armor shields only kinds that random base64 matches by chance, never a vendor's key
    d = Detector()
    for secret, kind in (("AKIAIOSFODNN7EXAMPLE", "aws_access_key"), ("AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW", "gcp_api_key")):
        for armor in ("CERTIFICATE", "PUBLIC KEY"):
            text = f"-----BEGIN {armor}-----\n{secret}\nMCowBQYDK2VwAyEAPw0VTgWngtJXMnuXdYkynz7OqFb4QbKBe8sYJDCL6ko=\n-----END {armor}-----"
            assert kind in {f.kind for f in d.find(text)}, (armor, kind)
    # an SSH blob whose type is no key type is no public key
    fake = "ssh-ed25519 AAAAZk3pQ9xLm2Vb7Nc4Rt8Yw1Ae5Sd6Fg0Hj9Kl"
    assert [f.kind for f in d.find(fake)] == ["high_entropy"]


@pytest.mark.parametrize("size", [1, 7, 30])
def test_private_keys_streamed_in_pieces_leak_nothing_of_their_bodies(size):
    for key in PRIVATE_KEYS:
        pieces = ["key: "] + [key[i:i + size] for i in range(0, len(key), size)] + [" - done."]
        text, raw, _ = run(pieces, window=96)
        assert "[REDACTED:private_key]" in text and text.endswith(" - done."), text
        if not key.startswith("{"):
            assert text == "key: [REDACTED:private_key] - done.", text
        assert not [line for line in _body_lines(key) if line.encode() in raw], (size, key[:40])
