"""A shutdown ends its background tasks even when one swallows a cancellation (as ``asyncio.wait_for``
does on CPython 3.11 when its inner wait finishes at the same moment, python/cpython#86296): a stress
run's gateway hung after "shutting down" in its identity sync until it was killed."""

from __future__ import annotations

import asyncio

from sluice.core.lifecycle import stop_task


async def test_a_background_loop_that_swallows_a_cancellation_is_still_stopped() -> None:
    swallowed, giving_up = 0, False

    async def loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed < 2 and not giving_up:  # as a wait_for that lost the race does: the loop goes on
                    swallowed += 1
                    continue
                raise

    task = asyncio.get_running_loop().create_task(loop())
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(stop_task(task, every=0.05))
    try:
        done, _ = await asyncio.wait({stopping}, timeout=5.0)  # not wait_for: it would wait on the stop's own cancel
        assert done, "stop_task is still waiting for a task that swallowed its cancellation"
        assert task.cancelled() and swallowed == 2
    finally:  # whatever happened, leave no task behind for the session's loop
        giving_up = True
        task.cancel()
        await asyncio.wait({stopping}, timeout=5.0)


async def test_a_task_that_failed_or_was_never_made_stops_without_raising() -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    task = asyncio.get_running_loop().create_task(fail())
    await asyncio.sleep(0)
    await stop_task(task)
    await stop_task(None)
    assert task.done() and isinstance(task.exception(), RuntimeError)
