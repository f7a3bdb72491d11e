"""Agent memory: the Responses API's stored responses, governed (issue 24).

A ``store: true`` response and its input items are kept in the store, sealed under a key of the
identity that made it (``vault``), for ``responses.retention_days``; only that identity reads them
back, chains them with ``previous_response_id`` (on any replica: the store is the one home), or
deletes them. Offboarding an identity deletes its memory; ``sluice responses purge`` deletes what
has expired (expired responses are invisible before that).
"""

from __future__ import annotations

from .responses import BrokenChain, ResponseMemory, Stored
from .vault import Vault

__all__ = ["BrokenChain", "ResponseMemory", "Stored", "Vault"]
