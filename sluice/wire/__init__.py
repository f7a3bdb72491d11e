"""Wire adapters at the edge of the one pipeline: each client API decoded into the pipeline's
request (the OpenAI chat shape of ``sluice.core.wire``) and its answers, whole or streamed,
encoded back. One subpackage per API; translation tables here, never in the stages. What the
adapters share sits beside them: the chat answers they read (``chat``), the steps of re-encoding a
chat stream (``chat_stream``), the dropped features (``dropped``), and for an upstream of the caller's
own API the reading of its answers (``native``) and the writing of its body (``native_body``).
"""

from __future__ import annotations

__all__: list[str] = []
