"""Stored responses: saved whole, read back by their identity only, chained, deleted and purged.

What is sealed per response is its Response object (as the caller was answered) and its own input
items; a chain's history is each link's input items followed by its output items, oldest first.
"""

from __future__ import annotations

from typing import Any

import msgspec
from cryptography.exceptions import InvalidTag

from ..core import clock
from ..core.config import Responses as Settings
from ..core.errors import Unavailable
from ..store import StoreUnavailable
from ..store.response_records import ResponseRecords
from .vault import Vault

DAY = 86400.0


class Stored(msgspec.Struct, kw_only=True):
    """What one stored response keeps: the answer and the input items that produced it."""

    response: dict[str, Any]
    input: list[dict[str, Any]]


_encode = msgspec.json.encode
_decode = msgspec.json.Decoder(Stored).decode


class BrokenChain(Exception):
    """A ``previous_response_id`` whose chain cannot be rebuilt: an id unknown, expired, deleted or
    another identity's, at the head or at any earlier link (``too_long``: past ``max_chain``)."""

    def __init__(self, too_long: bool = False) -> None:
        super().__init__("chain too long" if too_long else "chain broken")
        self.too_long = too_long


def _unavailable() -> Unavailable:
    return Unavailable("Stored responses are unavailable right now; try again shortly.", code="store_unavailable")


class ResponseMemory:
    """The Responses API's memory over the store, sealed per identity. Every method raises the gateway's
    503 ``store_unavailable`` when the store does not answer."""

    __slots__ = ("_records", "_vault", "_ttl", "_max_chain")

    def __init__(self, records: ResponseRecords, vault: Vault, settings: Settings | None = None) -> None:
        s = settings or Settings()
        self._records = records
        self._vault = vault
        self._ttl = s.retention_days * DAY
        self._max_chain = s.max_chain

    async def save(self, identity_id: str, response: dict[str, Any], items: list[dict[str, Any]]) -> None:
        """Keep ``response`` (its ``id``, ``model``, ``previous_response_id``, ``created_at`` read from it)."""
        rid = response["id"]
        now = clock.now()
        sealed = self._vault.seal(identity_id, rid, _encode(Stored(response=response, input=items)))
        await self._call(self._records.put, {"id": rid, "identity_id": identity_id, "created_at": now, "expires_at": now + self._ttl,
                                 "previous_id": response.get("previous_response_id"), "model": response.get("model") or "",
                                 "sealed": sealed})

    def _open(self, identity_id: str, row_id: str, sealed: str) -> Stored | None:
        try:
            return _decode(self._vault.open(identity_id, row_id, sealed))
        except (InvalidTag, ValueError, msgspec.DecodeError):  # not this identity's, or damaged: as if absent
            return None

    async def load(self, response_id: str, identity_id: str) -> Stored | None:
        """This identity's live response, or None (unknown, expired, deleted and another's look alike)."""
        row = await self._call(self._records.get, response_id, identity_id)
        return None if row is None else self._open(identity_id, row["id"], row["sealed"])

    async def history(self, previous_id: str, identity_id: str) -> list[dict[str, Any]]:
        """Every item of the chain ending at ``previous_id``, oldest first; ``BrokenChain`` if any link is gone."""
        links = await self._call(self._records.chain, previous_id, identity_id, self._max_chain + 1)
        if not links or len(links) > self._max_chain:
            raise BrokenChain(too_long=bool(links))
        for newer, older in zip(links, links[1:]):
            if newer["previous_id"] != older["id"]:
                raise BrokenChain()
        if links[-1]["previous_id"] is not None:  # the walk stopped at a link that is gone
            raise BrokenChain()
        items: list[dict[str, Any]] = []
        for link in reversed(links):
            stored = self._open(identity_id, link["id"], link["sealed"])
            if stored is None:
                raise BrokenChain()
            items.extend(stored.input)
            items.extend(stored.response.get("output") or ())
        return items

    async def delete(self, response_id: str, identity_id: str) -> bool:
        return await self._call(self._records.delete, response_id, identity_id)

    async def purge(self) -> int:
        return await self._call(self._records.purge)

    @staticmethod
    async def _call(query: Any, *args: Any) -> Any:
        try:
            return await query(*args)
        except StoreUnavailable:
            raise _unavailable() from None
