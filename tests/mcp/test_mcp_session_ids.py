"""Sealed MCP session ids (``sluice/mcp/session.py``) as a replica opens them again and again: remembering what an
id opened to never lets it open for another identity or server, nor after it expired or ended."""

from __future__ import annotations

import time

from sluice.mcp.session import Sessions

PEPPER = b"session-ids-test-pepper-0123456789"


async def test_an_id_opened_once_still_opens_only_for_its_own_identity_and_server():
    s = Sessions(PEPPER, 3600.0)
    sid = s.begin("id-agent", "files", "2025-06-18", "agent")
    for _ in range(2):  # the first open unseals it, the second finds it remembered
        got = await s.open(sid, "id-agent", "files")
        assert got is not None and got.protocol == "2025-06-18"
        assert await s.open(sid, "id-viewer", "files") is None  # another identity
        assert await s.open(sid, "id-agent", "notes") is None  # another server's path
        assert await s.open(sid, "id-agent", "*") is None  # the federated path


async def test_a_remembered_id_is_refused_once_it_ended_or_expired():
    s = Sessions(PEPPER, 3600.0)
    sid = s.begin("id-agent", "files", "2025-06-18")
    session = await s.open(sid, "id-agent", "files")
    assert session is not None
    await s.end(sid, session)
    assert await s.open(sid, "id-agent", "files") is None
    short = Sessions(PEPPER, 0.2)
    sid = short.begin("id-agent", "files", "2025-06-18")
    assert await short.open(sid, "id-agent", "files") is not None
    time.sleep(0.3)
    assert await short.open(sid, "id-agent", "files") is None
