"""A registry of many keys holds one roles set and one grants set per combination of roles, not two per key
(bench/scale.py: building those per principal was a third of a 100,000-identity reload). Counted."""

from __future__ import annotations

from sluice.core.types import ApiKey, Identity
from sluice.identity import CredentialRegistry, Hasher


def test_principals_of_the_same_roles_share_their_roles_and_grants():
    idents = [Identity(id=f"id-{i}", name=f"n-{i}", owner="o", created_at=1.0, models=["*"],
                       roles=["invoker"] if i % 2 else ["invoker", "auditor"]) for i in range(1000)]
    keys = [ApiKey(id=f"k-{i}", identity_id=f"id-{i}", hash=f"{i:064x}", display="d", created_at=1.0) for i in range(1000)]
    registry = CredentialRegistry(Hasher(b"test-pepper-0123456789abcdef"))
    registry.load(idents, keys)
    principals = list(registry._by_hash.values())
    assert len({id(p.roles) for p in principals}) == 2
    assert len({id(p.grants) for p in principals}) == 2
    auditor = next(p for p in principals if "auditor" in p.roles)
    assert "audit:read" in auditor.grants and "audit:read" not in principals[1].grants  # still each its own
