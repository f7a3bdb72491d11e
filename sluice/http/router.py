"""Path and method dispatch for the native server: exact paths in a dict, ``{name}`` patterns after."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from ..core.errors import GatewayError, MethodNotAllowed, NotFound
from ..core.exchange import Exchange, Reply, StreamReply

Handler = Callable[[Exchange], Awaitable[Reply | StreamReply]]
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NO_PARAMS: dict[str, str] = {}


class Router:
    """Finds the handler of a method and path, or the 404/405 error aiohttp's router would give."""

    __slots__ = ("_exact", "_patterns")

    def __init__(self, routes: list[tuple[str, str, Handler]]) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        patterns: dict[str, tuple[re.Pattern[str], dict[str, Handler]]] = {}
        for method, path, handler in routes:
            if "{" in path:
                regex = "^" + _PARAM.sub(r"(?P<\1>[^/]+)", re.escape(path).replace(r"\{", "{").replace(r"\}", "}")) + "$"
                patterns.setdefault(path, (re.compile(regex), {}))[1][method] = handler
            else:
                self._exact.setdefault(path, {})[method] = handler
        self._patterns = list(patterns.values())

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler and path parameters; raises ``NotFound`` or ``MethodNotAllowed``."""
        methods = self._exact.get(path)
        params = _NO_PARAMS
        if methods is None:
            for regex, by_method in self._patterns:
                m = regex.match(path)
                if m is not None:
                    methods, params = by_method, m.groupdict()
                    break
        if methods is None:
            raise NotFound(f"Unknown request URL: {method} {path[:200]}.", code="unknown_url")
        handler = methods.get(method)
        if handler is None:
            exc: GatewayError = MethodNotAllowed(f"Method {method} is not allowed on {path}.")
            exc.headers = {"Allow": ", ".join(methods)}
            raise exc
        return handler, params
