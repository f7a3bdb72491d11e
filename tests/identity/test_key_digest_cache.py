"""The key digest cache saves the HMAC on repeat requests and cannot be grown by a caller."""

from __future__ import annotations

import hmac

from sluice.identity import Hasher, generate
from sluice.identity.keys import DIGEST_CACHE_ENTRIES

PEPPER = b"test-pepper-0123456789abcdef"


def _hmac(key: str) -> str:
    return hmac.digest(PEPPER, key.encode(), "sha256").hex()


def test_cached_digests_are_the_hmac_and_sprayed_keys_stay_within_the_bound():
    h = Hasher(PEPPER)
    real = generate("prod")
    assert h.digest(real) == h.digest(real) == _hmac(real)
    sprayed = [generate("prod") for _ in range(DIGEST_CACHE_ENTRIES * 2 + 7)]
    for k in sprayed:
        assert h.digest(k) == _hmac(k)
    assert len(h._cache) == DIGEST_CACHE_ENTRIES  # the oldest went out; memory is bounded
    assert real not in h._cache and h.digest(real) == _hmac(real)  # evicted: computed again, same answer
    assert h.digest(sprayed[-1]) == _hmac(sprayed[-1])


def test_hostile_sized_keys_are_hashed_but_never_kept():
    h = Hasher(PEPPER)
    huge = "slk_prod_" + "A" * 8000
    assert h.digest(huge) == _hmac(huge)
    assert huge not in h._cache and not h._cache


def test_a_different_pepper_gives_different_digests_from_its_own_cache():
    a, b = Hasher(PEPPER), Hasher(PEPPER + b"x")
    k = generate("dev")
    assert a.digest(k) != b.digest(k) and a.digest(k) == _hmac(k)
