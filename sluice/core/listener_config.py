"""Named data-plane listeners (issue 28 item 3): what one listener serves, and the checks that keep
listeners apart from each other and from the control plane.

``data_plane`` is one listener (today's form: unnamed, serving everyone) or a list of named ones, each
with its own address, TLS, connection bound, body limit and ``serves``. The control plane never shares
an address with a data-plane listener.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from .errors import ConfigError
from .strict import Strict
from .types import Environment

if TYPE_CHECKING:
    from .config import Config, DataPlaneListener

_WILDCARDS = frozenset({"", "0.0.0.0", "::", "*"})


class Serves(Strict):
    """Who may call through a listener and which models it answers; a list left out does not narrow.

    ``identities`` and ``teams`` together say who (an identity named, or a member of a team named);
    ``environments`` narrows that further; ``models`` (exact names, ``prefix*``) narrows every
    caller's own scopes. A caller refused here is answered as an unknown credential is, and a model
    not listed as an unknown model is.
    """

    identities: list[str] | None = None
    teams: list[str] | None = None
    environments: list[Environment] | None = None
    models: list[str] | None = None


def check_listeners(config: Config) -> None:
    """Named, unique, each on its own address, none on the control plane's; ``serves`` only on a named one."""
    many = isinstance(config.data_plane, list)
    listeners: list[DataPlaneListener] = config.data_plane if many else [config.data_plane]  # type: ignore[assignment,list-item]
    if many and not listeners:
        raise msgspec.ValidationError("at least one listener is needed - at `$.data_plane`")
    names: set[str] = set()
    taken: list[tuple[str, str, int]] = [("control_plane", config.control_plane.host, config.control_plane.port)]
    issuers = {f.name for f in config.federation}  # what a listener's client_certs.federation may name
    for i, lst in enumerate(listeners):
        at = f"$.data_plane[{i}]" if many else "$.data_plane"
        if many and lst.name is None:
            raise msgspec.ValidationError(f"each listener of a list needs a name - at `{at}.name`")
        if lst.name is not None:
            if lst.name in names:
                raise msgspec.ValidationError(f"duplicate name {lst.name!r} - at `{at}.name`")
            names.add(lst.name)
        if lst.serves is not None and lst.name is None:
            raise msgspec.ValidationError(f"a listener that narrows what it serves needs a name - at `{at}.serves`")
        for what, host, port in taken:
            if port != 0 and port == lst.port and (host == lst.host or host in _WILDCARDS or lst.host in _WILDCARDS):
                whose = "the control plane" if what == "control_plane" else f"listener {what!r}"
                raise msgspec.ValidationError(
                    f"{lst.host}:{lst.port} is taken by {whose}; every listener needs an address of its own - at `{at}.port`")
        taken.append((lst.name or "data_plane", lst.host, lst.port))
        cc = lst.tls.client_certs if lst.tls is not None else None
        for j, name in enumerate(cc.federation if cc is not None else ()):
            if name not in issuers:  # as `serve` refuses it, so `sluice config check` says so too
                raise msgspec.ValidationError(f"no federation issuer is named {name!r} - at `{at}.tls.client_certs.federation[{j}]`")


def setting(config: Config, index: int, field: str) -> str:
    """The path of a data-plane listener's setting, as errors name it: ``data_plane.port`` or ``data_plane[1].port``."""
    return f"data_plane[{index}].{field}" if isinstance(config.data_plane, list) else f"data_plane.{field}"


def tls_refused(config: Config, index: int, exc: Exception) -> ConfigError:
    """A listener's certificate pair that cannot serve, naming its setting (the words of ``http.tls.at_setting``)."""
    return ConfigError(f"{exc} - at `$.{setting(config, index, 'tls')}`")
