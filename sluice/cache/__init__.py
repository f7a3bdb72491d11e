"""The response cache (issue 27): rule sets from the ``cache`` policy section, canonical keys, entries in the
chat form served whole or streamed, and their storage (memory or Redis)."""

from .entry import Entry, entry_decoder, events, from_stream, from_whole, whole
from .key import cache_key, scope_of
from .rules import CacheRules, Rule, compile_section
from .store import TAGS, CacheStore, MemoryStore, RedisStore, build_store, purge_quietly

__all__ = ["TAGS", "CacheRules", "CacheStore", "Entry", "MemoryStore", "RedisStore", "Rule", "build_store", "cache_key",
           "compile_section", "entry_decoder", "events", "from_stream", "from_whole", "purge_quietly", "scope_of", "whole"]
