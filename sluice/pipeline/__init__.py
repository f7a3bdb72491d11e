"""The request path, in order, on one screen.

    authenticate -> decode (validate) -> authorize -> route -> forward (upstream, relay) -> account

Each stage is a small object with one async method over the ``RequestContext``; a stage
returns to continue or raises a ``GatewayError`` to stop. Accounting runs for every request
however it ends.
"""

from __future__ import annotations

from ..core.config import RequestLimits
from ..core.wire import ChatCompletionRequest, EmbeddingRequest
from ..identity import CredentialRegistry, TokenService
from ..routing import RouteTable
from ..telemetry import UsageLedger
from ..upstream import Transport
from .context import RequestContext
from .endpoints import ListModels, ModelCall
from .forward import Forward
from .stages import Account, Authenticate, Authorize, Decode, Route

__all__ = ["DataPlane", "RequestContext"]


class DataPlane:
    """The data-plane handlers, built from their stages in the one fixed order."""

    def __init__(
        self, *, registry: CredentialRegistry, tokens: TokenService | None, routes: RouteTable,
        transports: dict[str, Transport], ledger: UsageLedger, limits: RequestLimits,
    ) -> None:
        authenticate = Authenticate(registry, tokens)
        authorize = Authorize()
        route = Route(routes, transports)
        account = Account(ledger)
        size = {"max_bytes": limits.max_body_bytes, "max_depth": limits.max_json_depth}

        def model_call(name: str, path: str, request_type: type) -> ModelCall:
            stages = (authenticate, Decode(request_type, **size), authorize, route)
            return ModelCall(name, stages, Forward(path, account), account)

        self.chat_completions = model_call("chat.completions", "/chat/completions", ChatCompletionRequest)
        self.embeddings = model_call("embeddings", "/embeddings", EmbeddingRequest)
        self.models = ListModels(authenticate, routes)

    def routes(self) -> list[tuple[str, str, object]]:
        """(method, path, handler) for the listener."""
        return [
            ("POST", "/v1/chat/completions", self.chat_completions),
            ("POST", "/v1/embeddings", self.embeddings),
            ("GET", "/v1/models", self.models),
        ]

