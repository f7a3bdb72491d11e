"""``${NAME}`` and ``${NAME:-default}`` references to the environment: the config file's, and the stdio MCP servers'
``env`` values, which are kept as written (so the policy they seed stores the reference, never the secret) and
resolved where the server starts."""

from __future__ import annotations

import os
import re

from .errors import ConfigError

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(value: str, path: str = "$") -> str:
    """``value`` with its references replaced; an unset one without a default is a ``ConfigError`` naming ``path``."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        got = os.environ.get(name)
        if got is None or got == "":
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is not set - at `{path}`")
        return got

    return ENV_REF.sub(sub, value)
