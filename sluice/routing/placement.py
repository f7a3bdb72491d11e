"""Placement across the replicas of one deployment: least outstanding requests, or prefix affinity.

On the data path each upstream is a :class:`Deployment`: its replicas (each wrapping the
transport that sends to it), the policy its config names (``upstreams[].placement``: least
outstanding, prefix affinity or round robin), and the replicas that pass their health checks.

Interface (what the router calls, per request)::

    placement = build_placement(settings, seed=deployment_name)   # once per deployment
    replica = placement.pick(replicas, messages)   # counts the request in flight on `replica` now
    ...                                            # send it to replica.url
    placement.done(replica)                        # when the request ends, however it ends
    placement.forget(replica)                      # on a restart or a failed health check

``replicas`` is the sequence of healthy :class:`Replica` objects of the deployment (the router
leaves out ejected ones); ``messages`` is the decoded request's message list (objects or dicts
with ``role`` and ``content``) or a string the caller has already built.

Prefix affinity follows the public schedulers, read, not copied:

- Gateway API inference extension, approximate prefix-cache plugin: the prompt is cut into
  64-character blocks, each block's hash chains the previous one and the first is seeded by the
  model, so equal text after different prefixes never matches; each replica has a bounded LRU
  of the block hashes the router itself sent it (no engine feedback needed).
- SGLang's cache-aware router: the replica with the longest match wins, unless load is
  unbalanced, in which case the shortest queue wins (``balance_abs`` / ``balance_rel``). SGLang
  sends a prompt that matches nowhere to the replica with the smallest index; here it goes where
  least outstanding would send it, so a workload without shared prefixes is placed exactly as
  least outstanding places it (once the indexes are full the two agree anyway).
- llm-d's precise scorer mixes prefix, cache-use and queue scores with weights, from an index
  fed by the engine's KV block events; here the queue score is a hard bound (a replica more
  than the slack above the least loaded one is not eligible), so affinity never overloads a
  replica. The index is the router's own by default; given ``block_keys`` (the engine's tokenizer
  and block hash) it also takes the engine's ``stored``/``removed`` block events, as llm-d's
  precise scorer does, while still recording its own picks at once (events arrive later).
  ``bench/bench_routing.py`` feeds it the sim's vLLM-shaped events (``sluice.sim.kv_events``).

Their known failure modes are avoided: a request is counted in flight on its replica at the
moment it is picked (a burst of requests with tied scores otherwise lands on one replica);
``forget`` drops a replica's index entries when it restarts or fails health checks; the whole
conversation (every message's role and text) is hashed, not only the first message; nothing is
tokenized on the routing path (blocks are characters) unless precise mode is asked for.

Cost: with Python's built-in string hash (SipHash in C, seeded per process, which is fine for an
index that lives in one process) a decision on an 8,000-character prompt is 0.043-0.049 ms
median on this project's loaded 2-core machine (``make bench-routing`` prints it; the test
bounds it at 0.3 ms for the shared machine). Precise mode with the sim's tokenizer costs ~0.43 ms.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..core.config import PlacementSettings
from .bulkhead import Bulkhead, unbounded

BLOCK_CHARS = 64

__all__ = ["Bulkhead", "Deployment", "LeastOutstanding", "Placement", "PlacementSettings", "PrefixAffinity", "Replica",
           "RoundRobin", "build_placement", "conversation_text"]


class Replica:
    """One replica of a deployment, as placement sees it: a name, where it listens, its load, and
    the transport that sends to it (on the data path; the bench and tests use the URL alone)."""

    __slots__ = ("name", "url", "in_flight", "transport")

    def __init__(self, name: str, url: str = "", transport: Any = None) -> None:
        self.name = name
        self.url = url
        self.transport = transport
        # Requests sent to this replica and not yet done, counted from the moment they are picked.
        self.in_flight = 0

    def __repr__(self) -> str:
        return f"Replica({self.name!r}, in_flight={self.in_flight})"


class Placement(Protocol):
    """Chooses a replica per request and tracks what is in flight where."""

    def pick(self, replicas: Sequence[Replica], prompt: str | Sequence[Any]) -> Replica:
        """The replica for this request, already counted in flight on it."""
        ...

    def done(self, replica: Replica) -> None:
        """The request picked onto ``replica`` has ended (answered, failed or cancelled)."""
        ...

    def forget(self, replica: Replica) -> None:
        """``replica`` restarted or failed its health check: whatever was learned about it is stale."""
        ...


class LeastOutstanding:
    """The replica with the fewest requests in flight; ties rotate so a burst spreads evenly."""

    __slots__ = ("_turn",)

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, replicas: Sequence[Replica], prompt: str | Sequence[Any] = "") -> Replica:
        """The least loaded replica, counted in flight on it now."""
        chosen = replicas[0] if len(replicas) == 1 else _least_loaded(replicas, self._turn)  # one: no call
        self._turn += 1
        chosen.in_flight += 1
        return chosen

    def done(self, replica: Replica) -> None:
        """One request fewer in flight on ``replica``."""
        if replica.in_flight > 0:
            replica.in_flight -= 1

    def forget(self, replica: Replica) -> None:
        """Nothing is learned per replica beyond its live count."""


class PrefixAffinity(LeastOutstanding):
    """Requests sharing a long prompt prefix go to the replica that was sent that prefix last,
    within a load bound; otherwise least outstanding. See the module docstring for the design."""

    __slots__ = ("_settings", "_seed", "_index", "_lru", "_bits", "_block_keys")

    def __init__(
        self, settings: PlacementSettings | None = None, seed: str = "",
        block_keys: Callable[[str | Sequence[Any]], list[int]] | None = None,
    ) -> None:
        super().__init__()
        self._settings = settings or PlacementSettings(policy="prefix_affinity")
        # Precise mode (llm-d): the engine's own block hashes for a prompt (its tokenizer and hash), so
        # the engine's KV events (``stored``/``removed``) can feed the same index. Costs tokenization.
        self._block_keys = block_keys
        # Seeding by model keeps two models' identical prompts apart in a shared index.
        self._seed = hash(("sluice-placement", seed))
        # block hash -> bitmask of replicas believed to hold it
        self._index: dict[int, int] = {}
        # per replica, its block hashes from least to most recently sent
        self._lru: dict[Replica, OrderedDict[int, None]] = {}
        self._bits: dict[Replica, int] = {}

    def block_hashes(self, prompt: str | Sequence[Any]) -> list[int]:
        """The chained hashes of the prompt's full blocks: each covers everything before it."""
        if self._block_keys is not None:
            return self._block_keys(prompt)
        text = prompt if isinstance(prompt, str) else conversation_text(prompt)
        size = self._settings.block_chars
        n = min(len(text) // size, self._settings.max_blocks)
        h = self._seed
        out = [0] * n
        for i in range(n):
            h = hash((h, text[i * size : (i + 1) * size]))
            out[i] = h
        return out

    def pick(self, replicas: Sequence[Replica], prompt: str | Sequence[Any] = "") -> Replica:
        """The eligible replica with the longest cached-prefix match, else the least loaded one."""
        if not replicas:
            raise ValueError("no replicas to place on")
        hashes = self.block_hashes(prompt)
        s = self._settings
        least = min(r.in_flight for r in replicas)
        ceiling = least + max(s.balance_abs, (s.balance_rel - 1.0) * least)
        eligible = 0
        for r in replicas:
            if r.in_flight <= ceiling:
                eligible |= self._bit(r)
        chosen: Replica | None = None
        if hashes:
            # Walk the chain while some eligible replica still holds it: the survivors hold the longest match.
            index = self._index
            alive = eligible
            depth = 0
            for h in hashes:
                holders = index.get(h, 0) & alive
                if not holders:
                    break
                alive = holders
                depth += 1
            if depth >= s.min_match_blocks:
                candidates = [r for r in replicas if self._bits[r] & alive]
                chosen = _least_loaded(candidates, self._turn)
        if chosen is None:
            # No usable match: exactly least outstanding's choice. (SGLang gives a new prefix to the
            # replica with the smallest index; once every index is full, as under steady traffic,
            # that is a tie and load decides anyway, and before that it put requests on busier
            # replicas: a workload with no shared prefixes must see least outstanding's latency.)
            chosen = _least_loaded(replicas, self._turn)
        self._turn += 1
        chosen.in_flight += 1
        self._remember(chosen, hashes)
        return chosen

    def forget(self, replica: Replica) -> None:
        """Drop every block hash remembered for ``replica``."""
        lru = self._lru.get(replica)
        if not lru:
            return
        keep = ~self._bits[replica]
        for h in lru:
            self._drop(h, keep)
        lru.clear()

    def stored(self, replica: Replica, hashes: Sequence[int]) -> None:
        """The engine reports these blocks cached on ``replica`` (a KV ``BlockStored`` event)."""
        self._bit(replica)
        self._remember(replica, hashes)

    def removed(self, replica: Replica, hashes: Sequence[int]) -> None:
        """The engine reports these blocks evicted from ``replica`` (a KV ``BlockRemoved`` event)."""
        lru = self._lru.get(replica)
        if not lru:
            return
        keep = ~self._bits[replica]
        for h in hashes:
            if h in lru:
                del lru[h]
                self._drop(h, keep)

    def indexed_blocks(self, replica: Replica) -> int:
        """How many block hashes are remembered for ``replica`` (for tests and the explain view)."""
        lru = self._lru.get(replica)
        return len(lru) if lru else 0

    def _bit(self, replica: Replica) -> int:
        bit = self._bits.get(replica)
        if bit is None:
            bit = self._bits[replica] = 1 << len(self._bits)
            self._lru[replica] = OrderedDict()
        return bit

    def _remember(self, replica: Replica, hashes: Sequence[int]) -> None:
        """Record that ``replica`` was sent these blocks (the approximate index learns from its own picks)."""
        if not hashes:
            return
        bit = self._bits[replica]
        lru = self._lru[replica]
        index = self._index
        for h in hashes:
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                index[h] = index.get(h, 0) | bit
        cap = self._settings.index_blocks
        while len(lru) > cap:
            old, _ = lru.popitem(last=False)
            self._drop(old, ~bit)

    def _drop(self, h: int, keep: int) -> None:
        """Clear one replica's bit (``keep`` is its complement) from the holders of block ``h``."""
        index = self._index
        left = index.get(h, 0) & keep
        if left:
            index[h] = left
        else:
            index.pop(h, None)


class RoundRobin(LeastOutstanding):
    """The next replica in turn, whatever its load or cache (the baseline the bench measures against)."""

    __slots__ = ()

    def pick(self, replicas: Sequence[Replica], prompt: str | Sequence[Any] = "") -> Replica:
        chosen = replicas[self._turn % len(replicas)]
        self._turn += 1
        chosen.in_flight += 1
        return chosen


def build_placement(settings: PlacementSettings | None = None, seed: str = "") -> LeastOutstanding:
    """The placement policy a deployment's settings name; ``seed`` is the model or deployment name."""
    if settings is not None and settings.policy == "prefix_affinity":
        return PrefixAffinity(settings, seed)
    if settings is not None and settings.policy == "round_robin":
        return RoundRobin()
    return LeastOutstanding()


class Deployment:
    """One upstream's replicas and its placement: what a target sends through on the data path.

    ``live`` holds the replicas placement may choose from: all of them, less those that failed
    their last active health check (``eject``), but never none (a deployment whose every replica
    fails is left to the breakers). It is swapped whole, so a pick sees one consistent tuple.
    A target whose digest some replicas do not serve sends through a view of it (``without``).
    """

    __slots__ = ("name", "replicas", "live", "placement", "down", "barred", "_views", "bulkhead")

    def __init__(self, name: str, replicas: Sequence[Replica], placement: Placement | None = None,
                 barred: frozenset[Replica] = frozenset(), bulkhead: Bulkhead | None = None) -> None:
        if not replicas:
            raise ValueError("a deployment needs at least one replica")
        self.name = name
        self.replicas = tuple(replicas)
        self.placement = placement or LeastOutstanding()
        self.down: frozenset[Replica] = frozenset()
        # replicas a view never picks (they serve other weights than the version's: routing.supply)
        self.barred = barred
        self._views: dict[frozenset[Replica], Deployment] = {}
        self.bulkhead = bulkhead or unbounded()  # this upstream's own bound and line (routing.bulkhead)
        self._set_down(self.down)

    def without(self, barred: frozenset[Replica]) -> Deployment:
        """This deployment as one target sees it when ``barred`` serve other weights than that target's: the
        same replicas, placement, health and bulkhead, never picking a barred one. Kept per set, updated by
        ``eject``."""
        if not barred:
            return self
        view = self._views.get(barred)
        if view is None:
            view = self._views[barred] = Deployment(self.name, self.replicas, self.placement, barred, self.bulkhead)
        view._set_down(self.down)
        return view

    def pick(self, prompt: str | Sequence[Any]) -> Replica | None:
        """A live replica for this request, counted in flight on it and in the bulkhead; None when the
        bulkhead is full or has a line: ``wait`` then. Every replica picked is given back with ``done``."""
        b = self.bulkhead  # Bulkhead.enter, inline: this runs per request
        if b.in_flight < b.limit and not b.waiters:
            b.in_flight += 1
            return self.placement.pick(self.live, prompt)
        return None

    async def wait(self, prompt: str | Sequence[Any]) -> Replica:
        """``pick`` after a wait in the bulkhead's line; ``Unavailable`` (503 with Retry-After) if the line is full
        or the wait outlasts its deadline."""
        await self.bulkhead.wait()
        return self.placement.pick(self.live, prompt)

    def done(self, replica: Replica) -> None:
        """The request picked onto ``replica`` has ended, however it ended."""
        self.placement.done(replica)
        b = self.bulkhead
        if b.waiters:
            b.leave()
        else:
            b.in_flight -= 1  # Bulkhead.leave with nobody waiting, inline

    def eject(self, replica: Replica) -> None:
        """``replica`` failed a health check: no more picks, and what placement learned about it is stale."""
        self.placement.forget(replica)
        self._set_down(self.down | {replica})

    def restore(self, replica: Replica) -> None:
        """``replica`` answers again: it takes picks (with an empty index: it may have restarted)."""
        if replica in self.down:
            self._set_down(self.down - {replica})

    def _set_down(self, down: frozenset[Replica]) -> None:
        self.down = down
        barred = self.barred
        allowed = tuple(r for r in self.replicas if r not in barred) or self.replicas
        self.live = tuple(r for r in allowed if r not in down) or allowed
        for view in self._views.values():
            view._set_down(down)


def conversation_text(messages: Sequence[Any]) -> str:
    """The whole conversation as one string, role and text of every message in order.

    Every message counts: two conversations sharing a system prompt but not the turns after it
    share only the blocks of the system prompt.
    """
    parts: list[str] = []
    for m in messages:
        if isinstance(m, dict):
            role, content = m.get("role", ""), m.get("content")
        else:
            role, content = m.role, m.content
        parts.append(str(role))
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    parts.append(part["text"])
    # A separator no text contains, so "ab"+"c" and "a"+"bc" differ.
    return "\x1e".join(parts)


def _least_loaded(replicas: Sequence[Replica], turn: int) -> Replica:
    """The replica with the fewest in flight; among ties, the one ``turn`` rotates to."""
    n = len(replicas)
    if n == 1:
        return replicas[0]
    start = turn % n
    best = replicas[start]
    for i in range(1, n):
        r = replicas[(start + i) % n]
        if r.in_flight < best.in_flight:
            best = r
    return best
