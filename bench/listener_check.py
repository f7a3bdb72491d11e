"""What a request's listener check costs (issue 28 item 3), counted in instructions with no I/O and no timers:
``python bench/listener_check.py N [named]`` runs N requests' worth of the code the check touches (the
Exchange made, the key authenticated, the model authorized, the routing decision made), nothing else.

Under callgrind with instrumentation off until the loop starts (the script waits for a line on stdin once
it is set up, so the imports are not counted), the per-request count is the instructions counted / N, the
same on a loaded machine: ``bench/listener_check.sh``.

``named``: through a named listener whose ``serves`` lists the caller's identity, environment and model (the
check run and passed); without it, a single unnamed listener (the check skipped), comparable with a checkout
from before listeners had names.
"""

from __future__ import annotations

import sys

from sluice.core.exchange import Exchange
from sluice.core.types import ApiKey, Identity
from sluice.identity import CredentialRegistry, Hasher, generate
from sluice.pipeline.context import RequestContext
from sluice.pipeline.stages import Authenticate, Authorize


class _Request:
    model = "mock-model"


def main(n: int, named: bool) -> None:
    hasher = Hasher(b"bench-pepper-not-for-production-0001")
    key = generate("prod")
    registry = CredentialRegistry(hasher)
    ident = Identity(id="id-1", name="bench", owner="o", environment="prod", models=["mock-model"], created_at=0.0)
    registry.load([ident], [ApiKey(id="k-1", identity_id="id-1", hash=hasher.digest(key), display="x", created_at=0.0)])
    authenticate, authorize = Authenticate(registry), Authorize()
    served = None
    if named:
        from sluice.core.listener_config import Serves
        from sluice.identity import Served

        served = Served("public", Serves(identities=["bench"], environments=["prod"], models=["mock-model"]))
    args = ("POST", "/v1/chat/completions", {}, {}, {"Authorization": f"Bearer {key}"}, b"{}", "127.0.0.1", "req-1")
    if "listener" in Exchange.__slots__:
        args += (served,)
    request = _Request()
    print("ready", flush=True)
    sys.stdin.readline()  # instrumentation goes on now (callgrind_control -i on)
    for _ in range(n):
        ctx = RequestContext(Exchange(*args), "chat.completions")
        _run(authenticate(ctx))
        ctx.request = request
        _run(authorize(ctx))
        if named:  # what Route and Account read besides (on an unnamed listener: one load and test each)
            assert ctx.exchange.listener.name
    print("done", flush=True)
    sys.stdin.readline()


def _run(coro) -> None:  # noqa: ANN001  # a stage that does not wait: one send, no loop
    try:
        coro.send(None)
    except StopIteration:
        return
    raise AssertionError("a stage waited")


if __name__ == "__main__":
    main(int(sys.argv[1]), len(sys.argv) > 2 and sys.argv[2] == "named")
