"""``sluice routes``: the routing policy, weight shifts, approvals, rollback and decision lookups."""

from __future__ import annotations

from urllib.parse import quote

import typer

from .client import admin_call
from .output import Col, OutputOption, fields, line, print_json, table, text, when

app = typer.Typer(no_args_is_help=True, help="Routes, the model registry and releases.")
_ROUTE = typer.Argument(..., metavar="ROUTE", help="Its name (sluice routes list).")


def _match(spec: dict) -> str:
    m = spec.get("match") or {}
    parts = [f"{k} {text(v)}" for k, v in m.items() if v not in (None, [], "")]
    return "; ".join(parts) or "everything"


@app.command("list")
def list_routes(fmt: str = OutputOption()) -> None:
    """The routing policy: routes with their weights and fallbacks, and the registry's versions."""
    got = admin_call("GET", "/admin/routing")
    if fmt == "json":
        print_json(got)
        return
    policy = got["policy"]
    table([Col("route", "name"), Col("takes", _match, wrap=True),
           Col("targets", lambda s: [f"{t['target']}={t['weight']}" for t in s["targets"]], wrap=True),
           Col("fallbacks", "fallbacks", wrap=True, optional=True)],
          policy.get("routes", []), title=f"routes (routing version {got['version']})", empty="no routes")
    versions = [{"target": f"{m['name']}@{v['version']}", **v} for m in policy.get("registry", []) for v in m["versions"]]
    table([Col("version", "target"), Col("upstream", "upstream"), Col("approved", "approved"),
           Col("env", lambda v: v.get("environment") or "any", optional=True),
           Col("upstream model", "upstream_model", optional=True)],
          versions, title="registry", empty="no registered versions")


def _weights(got: dict, fmt: str, done: str) -> None:
    if fmt == "json":
        print_json(got)
    elif got.get("pending"):
        line(f"{done}: waits for a second operator (it touches a prod part): sluice policy approve {got['id']} --reason ...")
    else:
        shares = ", ".join(f"{t['target']}={t['weight']}" for t in got.get("targets", []))
        line(f"{done}: {shares} (routing version {got.get('version')})")


@app.command()
def weights(route: str = _ROUTE,
            target: list[str] = typer.Argument(..., metavar="MODEL@VERSION=WEIGHT...", help="One per target."),
            fmt: str = OutputOption()) -> None:
    """Shift a route's traffic, e.g. ``sluice routes weights chat chat@v1=90 chat@v2=10``."""
    targets = []
    for t in target:
        name, sep, weight = t.rpartition("=")
        if not sep or not weight.isdigit():
            raise typer.BadParameter(f"{t!r}: write model@version=WEIGHT")
        targets.append({"target": name, "weight": int(weight)})
    _weights(admin_call("PUT", f"/admin/routing/routes/{quote(route, safe='')}/weights", {"targets": targets},
                        listed_by="sluice routes list"), fmt,
             f"route {route}")


@app.command()
def rollback(route: str = _ROUTE, fmt: str = OutputOption()) -> None:
    """Restore the weights a route had before its last change."""
    _weights(admin_call("POST", f"/admin/routing/routes/{quote(route, safe='')}/rollback", listed_by="sluice routes list"),
             fmt, f"route {route} is back to")


@app.command()
def approve(target: str = typer.Argument(..., metavar="MODEL@VERSION"),
            revoke: bool = typer.Option(False, "--revoke", help="Withdraw the approval."), fmt: str = OutputOption()) -> None:
    """Approve a registry version (``model@version``) to take traffic (operator role)."""
    model, sep, version = target.partition("@")
    if not sep:
        raise typer.BadParameter("write model@version")
    got = admin_call("PUT", f"/admin/registry/{quote(model, safe='')}/versions/{quote(version, safe='')}/approval",
                     {"approved": not revoke}, listed_by="sluice routes list")
    if fmt == "json":
        print_json(got)
    elif got.get("pending"):
        line(f"waits for a second operator: sluice policy approve {got['id']} --reason ...")
    else:
        line(f"{target} is {'approved' if got['approved'] else 'no longer approved'} (routing version {got['version']})")


@app.command()
def why(request_id: str = typer.Argument(..., metavar="REQUEST_ID", help="A response's x-request-id."),
        fmt: str = OutputOption()) -> None:
    """Why a recent request went where it went (asked of the replica that served it)."""
    got = admin_call("GET", f"/admin/routes/decisions/{quote(request_id, safe='')}")
    if fmt == "json":
        print_json(got)
        return
    policy = got.get("policy") or {}
    fields([("request", got["request_id"]), ("at", when(got.get("at"))), ("model", got["model"]),
            ("route", f"{got['route']} (takes {_match(got)})"), ("target", got.get("target")),
            ("candidates", [f"{c['target']} weight {c['weight']} ({c['share']:.0%}, breaker {c['breaker']})"
                            for c in got.get("candidates", [])]),
            ("fallbacks", [f["target"] for f in got.get("fallbacks", [])]),
            ("left out", [f"{k}: {v}" for k, v in (got.get("excluded") or {}).items()] + list(got.get("skipped") or [])),
            ("attempts", [f"{a['target']} {a['outcome']} {a['ms']} ms" for a in got.get("attempts", [])]),
            ("policy", f"version {policy['version']} (sha256:{policy['hash'][:12]})" if policy else None)])
