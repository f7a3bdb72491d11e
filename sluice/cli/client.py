"""A small control-plane client for the CLI: ``SLUICE_ADMIN_URL``, ``SLUICE_ADMIN_KEY``, and ``SLUICE_ADMIN_CA``
(a PEM bundle to verify an https control plane by, when its certificate is not from a CA the system trusts)."""

from __future__ import annotations

import os
import ssl
from typing import Any

import httpx
import typer
from rich.markup import escape

from .output import err


def admin_call(method: str, path: str, body: dict | None = None, *, listed_by: str | None = None) -> Any:
    """Call the control plane; JSON in and out; exits with a clear message on any error (on a 404, with the
    command that lists what there is, ``listed_by``)."""
    r = _request(method, path, body, listed_by)
    return r.json() if r.content else {}


def admin_text(method: str, path: str, *, listed_by: str | None = None) -> str:
    return _request(method, path, None, listed_by).text


def _verify() -> ssl.SSLContext | bool:
    """The system's trust store, or only the CA bundle in ``SLUICE_ADMIN_CA``."""
    ca = os.environ.get("SLUICE_ADMIN_CA")
    if not ca:
        return True
    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        err.print(f"[red]SLUICE_ADMIN_CA={ca} is not a readable PEM CA bundle:[/red] {getattr(exc, 'strerror', None) or exc}")
        raise typer.Exit(2) from None


def _request(method: str, path: str, body: dict | None, listed_by: str | None = None) -> httpx.Response:
    base = os.environ.get("SLUICE_ADMIN_URL", "http://127.0.0.1:8081").rstrip("/")
    key = os.environ.get("SLUICE_ADMIN_KEY")
    if not key:
        err.print("[red]set SLUICE_ADMIN_KEY[/red] to an admin key (and SLUICE_ADMIN_URL if not http://127.0.0.1:8081)")
        raise typer.Exit(2)
    try:
        r = httpx.request(method, base + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10,
                          verify=_verify())
    except httpx.ConnectError as exc:
        why = "its certificate is not trusted (set SLUICE_ADMIN_CA to its CA's PEM)" if "CERTIFICATE_VERIFY_FAILED" in str(exc) \
            else type(exc).__name__
        err.print(f"[red]cannot reach the control plane at {base}:[/red] {why}")
        raise typer.Exit(1) from None
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach the control plane at {base}:[/red] {type(exc).__name__}")
        raise typer.Exit(1) from None
    if r.status_code >= 400:
        try:
            msg = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = r.text[:300]
        hint = f"; list them with: {listed_by}" if listed_by and r.status_code == 404 else ""
        err.print(f"[red]{r.status_code}[/red] {escape(msg + hint)}", highlight=False)
        raise typer.Exit(1)
    return r
