"""Rug-pull defence (issue 25, item 5): a definition is pinned by hash in the policy; anything else is quarantined.

Three kinds of definition are pinned, each what a model reads of it:

- a tool: its name (the server's own), title, description, input and output schemas, annotations;
- a prompt: its name, title, description and arguments;
- a resource template: its name, title, URI template, description, MIME type and annotations.

A definition is hashed as canonical JSON (keys sorted, absent fields absent) with SHA-256. The active
policy's ``mcp.pins`` maps a pin key to the hash an operator approved: a tool's key is its namespaced name
(``server__tool``), a prompt's ``prompt:server__prompt``, a template's ``template:server__name`` (its name,
not its URI template). On a server whose ``mcp.pin`` is ``required`` (the default), a definition that is not
pinned (``unpinned``) or is not the pinned one (``changed``) is quarantined: the list hides it and a call,
get, read or completion that needs it is refused, until an operator approves the definition by a change set
that sets its pin. Every replica reads the same pins (they are in the policy version) and hashes what its
upstream says now, so all agree.

A use is checked against the definitions this replica last listed from the server, listed again when they
are older than ``mcp.pin_recheck_s``. A resource read on a ``required`` server is served when the URI is one
the server lists as a resource (resources themselves are not pinned) or matches a pinned template; one that
matches only quarantined templates, or nothing the server lists, is refused. The first time a replica
quarantines a definition it writes an audit entry (``mcp.quarantine``) naming it, both hashes and the scan
finding.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
import mcp.types as mt

from ..core import clock
from ..core.mcp_config import McpPolicy
from ..core.types import ChangeEvent
from ..guard import Detector
from ..guard.injection import injection_score
from .authz import namespaced
from .jsonrpc import REFUSED, Refusal

log = logging.getLogger("sluice.mcp")
State = Literal["pinned", "changed", "unpinned", "off"]
Kind = Literal["tool", "prompt", "template"]
KINDS: tuple[Kind, ...] = ("tool", "prompt", "template")
FIELDS: dict[str, tuple[str, ...]] = {
    "tool": ("name", "title", "description", "inputSchema", "outputSchema", "annotations"),
    "prompt": ("name", "title", "description", "arguments"),
    "template": ("name", "title", "uriTemplate", "description", "mimeType", "annotations"),
}
PREFIX: dict[str, str] = {"tool": "", "prompt": "prompt:", "template": "template:"}
_SCAN = Detector()
_NO_PINS = McpPolicy()
Definition = mt.Tool | mt.Prompt | mt.ResourceTemplate


def pin_key(kind: str, namespace: str, own: str) -> str:
    """The name a definition is pinned under in ``mcp.pins``."""
    return PREFIX[kind] + namespaced(namespace, own)


def kind_of(key: str) -> tuple[Kind, str]:
    """A pin key's kind and its namespaced name (``prompt:files__x`` -> ``("prompt", "files__x")``)."""
    for kind in ("prompt", "template"):
        if key.startswith(PREFIX[kind]):
            return kind, key[len(PREFIX[kind]):]  # type: ignore[return-value]
    return "tool", key


def definition(item: Definition, kind: str = "tool") -> dict[str, Any]:
    """The part of a definition that is pinned, as plain JSON data (absent fields are absent, not null)."""
    data = item.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {k: data[k] for k in FIELDS[kind] if k in data}


def definition_hash(item: Definition, kind: str = "tool") -> str:
    """SHA-256 (hex) of the canonical JSON of a definition."""
    return hashlib.sha256(msgspec.json.encode(definition(item, kind), order="sorted")).hexdigest()


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in (*_texts(k), *_texts(v))]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    return []


def scan(item: Definition, kind: str = "tool") -> dict[str, Any]:
    """What an approver should know before pinning: the injection signal and the secret/PII kinds found in
    every text of the definition (descriptions, schema titles, enum values, argument names, annotations)."""
    text = "\n".join(_texts(definition(item, kind)))
    score = injection_score(text)
    kinds = sorted({f.kind for f in _SCAN.find(text)})
    return {"injection": score, "detectors": kinds, "flagged": score > 0 or bool(kinds)}


def template_pattern(uri_template: str) -> re.Pattern[str]:
    """An RFC 6570 template as a pattern over URIs (each ``{...}`` one or more characters)."""
    parts = re.split(r"\{[^{}]*\}", uri_template)
    return re.compile(".+".join(re.escape(p) for p in parts) + r"\Z")


class Seen:
    """One definition as its server lists it now, with its pin state under the active policy."""

    __slots__ = ("server", "kind", "name", "item", "sha256", "pinned", "state")

    def __init__(self, server: str, kind: Kind, name: str, item: Definition, sha256: str, pinned: str | None,
                 state: State) -> None:
        self.server, self.kind, self.name, self.item = server, kind, name, item  # name: the pin key
        self.sha256, self.pinned, self.state = sha256, pinned, state

    @property
    def quarantined(self) -> bool:
        return self.state in ("changed", "unpinned")


class Pins:
    """Compares what the servers list with the active policy's pins; remembers each server's last listings."""

    def __init__(self, policy: Callable[[], McpPolicy | None], recheck_s: float,
                 record: Callable[[ChangeEvent], Awaitable[None]] | None = None) -> None:
        self._policy = policy  # the active version's ``mcp`` section
        self._recheck_s = recheck_s
        self._record = record  # the store's change log and audit journal
        # (kind, server) -> (monotonic time, definitions by their own name); kind "resource": URIs listed
        self._listed: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._reported: set[tuple[str, str]] = set()  # (pin key, hash) already written as quarantined

    def section(self) -> McpPolicy:
        return self._policy() or _NO_PINS

    def judge(self, server: str, namespace: str, item: Definition, kind: Kind = "tool") -> Seen:
        return self._state(server, kind, pin_key(kind, namespace, item.name), item, definition_hash(item, kind))

    def rejudge(self, seen: Seen) -> Seen:
        """A listed definition under the pins active now (they may have changed since it was listed), by the hash
        its listing computed: the definition is the one listed, so its hash is too."""
        return self._state(seen.server, seen.kind, seen.name, seen.item, seen.sha256)

    def _state(self, server: str, kind: Kind, name: str, item: Definition, digest: str) -> Seen:
        p = self.section()
        pinned = p.pins.get(name)
        if p.mode(server) == "off":
            state: State = "off"
        else:
            state = "unpinned" if pinned is None else "pinned" if pinned == digest else "changed"
        return Seen(server=server, kind=kind, name=name, item=item, sha256=digest, pinned=pinned, state=state)

    async def observe(self, server: str, namespace: str, items: list[Any], kind: Kind = "tool") -> list[Seen]:
        """Every definition of a listing with its state; remembers the listing and records each new quarantine."""
        seen = [self.judge(server, namespace, t, kind) for t in items]
        self._listed[(kind, server)] = (time.monotonic(), {s.item.name: s for s in seen})
        for s in seen:
            if s.quarantined and (s.name, s.sha256) not in self._reported:
                self._reported.add((s.name, s.sha256))
                await self._quarantined(s)
        return seen

    async def screen(self, server: str, namespace: str, items: list[Any], kind: Kind = "tool") -> list[Any]:
        """The definitions of a listing that are not quarantined."""
        return [s.item for s in await self.observe(server, namespace, items, kind) if not s.quarantined]

    async def _current(self, server: str, namespace: str, kind: Kind,
                       listing: Callable[[], Awaitable[list[Any]]]) -> dict[str, Seen]:
        """This replica's last listing of one kind from a server, listed again when it is older than the recheck."""
        at, items = self._listed.get((kind, server), (None, {}))
        if at is None or time.monotonic() - at > self._recheck_s:
            await self.observe(server, namespace, await listing(), kind)
            items = self._listed[(kind, server)][1]
        return items

    async def check(self, server: str, namespace: str, own: str, listing: Callable[[], Awaitable[list[Any]]],
                    kind: Kind = "tool") -> None:
        """Refuse a use of a quarantined tool or prompt (a ``Refusal``); lists the server again when the last
        listing is old."""
        if self.section().mode(server) == "off":
            return
        got = (await self._current(server, namespace, kind, listing)).get(own)
        seen = self.rejudge(got) if got is not None else None  # pins may have changed since
        if seen is None or seen.quarantined:
            raise _refusal(kind, pin_key(kind, namespace, own), seen)

    async def check_call(self, server: str, namespace: str, tool: str,
                         listing: Callable[[], Awaitable[list[mt.Tool]]]) -> None:
        """Refuse a call to a quarantined tool."""
        await self.check(server, namespace, tool, listing, "tool")

    async def check_template(self, server: str, namespace: str, uri_template: str,
                             listing: Callable[[], Awaitable[list[mt.ResourceTemplate]]]) -> None:
        """Refuse a completion on a quarantined (or unlisted) resource template, named by its URI template."""
        if self.section().mode(server) == "off":
            return
        found = [s for s in (await self._current(server, namespace, "template", listing)).values()
                 if getattr(s.item, "uri_template", None) == uri_template]
        self._allow_templates(server, namespace, found, uri_template)

    async def check_read(self, server: str, namespace: str, uri: str,
                         resources: Callable[[], Awaitable[list[mt.Resource]]],
                         templates: Callable[[], Awaitable[list[mt.ResourceTemplate]]]) -> None:
        """Refuse a read of a URI that the server lists as no resource and that matches no pinned template."""
        if self.section().mode(server) == "off":
            return
        at, listed = self._listed.get(("resource", server), (None, {}))
        if at is None or time.monotonic() - at > self._recheck_s:
            listed = {str(r.uri): True for r in await resources()}
            self._listed[("resource", server)] = (time.monotonic(), listed)
        if uri in listed:
            return
        found = [s for s in (await self._current(server, namespace, "template", templates)).values()
                 if template_pattern(getattr(s.item, "uri_template", "")).match(uri)]
        self._allow_templates(server, namespace, found, uri)

    def _allow_templates(self, server: str, namespace: str, found: list[Seen], what: str) -> None:
        judged = [self.rejudge(s) for s in found]  # pins may have changed since
        if any(not s.quarantined for s in judged):
            return
        if judged:
            raise _refusal("template", judged[0].name, judged[0])
        raise Refusal(REFUSED, f"The resource {what[:128]} is quarantined pending approval: the server lists no "
                               f"resource or resource template for it.", "template_quarantined",
                      data={"reason": "quarantined", "state": "unlisted", "sha256": None})

    async def _quarantined(self, s: Seen) -> None:
        log.warning("mcp: %s %s quarantined (%s): sha256 %s, pinned %s", s.kind, s.name, s.state, s.sha256, s.pinned)
        if self._record is None:
            return
        event = ChangeEvent(id=uuid.uuid4().hex, ts=clock.now(), actor="sluice", action="mcp.quarantine", target=s.name,
                            source_ip=None, detail={"server": s.server, "kind": s.kind, "state": s.state,
                                                    "sha256": s.sha256, "pinned": s.pinned, "scan": scan(s.item, s.kind)})
        try:
            await self._record(event)
        except Exception as exc:  # the definition stays quarantined either way; only the entry is missing
            self._reported.discard((s.name, s.sha256))
            log.warning("mcp: could not record the quarantine of %s: %s", s.name, type(exc).__name__)


def _refusal(kind: str, name: str, seen: Seen | None) -> Refusal:
    why = "the server does not list it" if seen is None else (
        "its definition is not pinned" if seen.state == "unpinned" else "its definition changed since it was pinned")
    return Refusal(REFUSED, f"The {kind} {name[:128]} is quarantined pending approval: {why}. An operator approves "
                            f"its definition with `sluice mcp approve {name[:128]}`.", f"{kind}_quarantined",
                   data={"reason": "quarantined", "state": "unlisted" if seen is None else seen.state,
                         "sha256": None if seen is None else seen.sha256})
