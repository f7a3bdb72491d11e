"""The MCP gateway (issue 25, first slice): agents reach their tools through sluice with the same identities and
tool policy as their models. ``/mcp/{server}`` over Streamable HTTP, sessions sealed into their ids, one shared
upstream session per server under the server's own credential, the tool registry deciding every call."""

from .endpoints import McpEndpoints
from .fanout import Fanout
from .gateway import McpGateway
from .notify import Streams
from .session import Sessions
from .subscriptions import Subscriptions
from .upstreams import Upstreams

__all__ = ["Fanout", "McpEndpoints", "McpGateway", "Sessions", "Streams", "Subscriptions", "Upstreams"]
