"""Wire adapters at the edge of the one pipeline: each client API decoded into the pipeline's
request (the OpenAI chat shape of ``sluice.core.wire``) and its answers, whole or streamed,
encoded back. One subpackage per API; translation tables here, never in the stages.
"""

from __future__ import annotations

__all__: list[str] = []
