"""The key of an answer: a canonical digest of everything that decides it, and nothing that does not.

In it: the cache section's digest (a change of the section is a new key space), the scope (the identity,
the team or everyone), the target version actually chosen (its name, the upstream's model name and the
registry digest: never the alias the caller asked for, so a new version behind the same name misses),
and the chat request as decoded (messages, sampling parameters, tools, response format...) with its
``model`` replaced by that version and the streaming fields removed, so a whole answer serves a stream
and the reverse. The request is encoded with keys sorted: two requests that decode alike share a key,
and byte-identical requests always do (no id, time or header is in it).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from msgspec import UNSET

_encode = msgspec.json.Encoder(order="sorted").encode
# the stored entry's format (2: sluice.cache.wire's msgpack): replicas of another format never read each other's
FORMAT = "2"


def cache_key(section: str, scope: str, target: Any, request: Any) -> str:
    """The hex digest naming one answer (``target``: the routing ``Target`` chosen for this request)."""
    canonical = _encode(msgspec.structs.replace(request, model=target.name, stream=UNSET, stream_options=UNSET))
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{FORMAT}\0{section}\0{scope}\0{target.name}\0{target.upstream_model}\0{target.digest or ''}\0".encode())
    h.update(canonical)
    return h.hexdigest()


def scope_of(scope: str, identity_id: str, team: str | None) -> str:
    """Who shares an entry: ``i:<identity id>``, ``t:<team>`` (an identity with no team: its own), or ``*``."""
    if scope == "global":
        return "*"
    if scope == "team" and team:
        return f"t:{team}"
    return f"i:{identity_id}"
