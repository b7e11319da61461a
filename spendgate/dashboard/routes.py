"""Serving the API Keys page at `/dashboard/`.

The assets (`static/`, shipped as package data) are read once at start-up, off the event
loop, and served from memory with a strong ETag and `Cache-Control: no-cache`: file names
carry no content hash (there is no build step), so browsers revalidate, and a 304 costs no
body. Every response carries a Content-Security-Policy that allows only this page's own
scripts and styles (no inline script or style, no HTML sinks through Trusted Types) and
network requests only to the same origin, which is where the admin API is.

The page needs no token to load: it holds nothing secret. The admin token is typed into it
and kept in the tab's sessionStorage; the page sends it only to the admin API.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath
from types import MappingProxyType

from aiohttp import web

PATH = "/dashboard"
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str  # without quotes: the first 32 hex digits of the body's SHA-256


Assets = MappingProxyType[str, Asset]
ASSETS = web.AppKey("dashboard_assets", Assets)


def load_assets() -> Assets:
    """Every file of `static/` whose type the page uses, by file name. Blocking I/O."""
    folder = resources.files("spendgate.dashboard") / "static"
    found: dict[str, Asset] = {}
    for entry in folder.iterdir():
        content_type = CONTENT_TYPES.get(PurePosixPath(entry.name).suffix)
        if content_type is not None and entry.is_file():
            body = entry.read_bytes()
            found[entry.name] = Asset(body, content_type, hashlib.sha256(body).hexdigest()[:32])
    return MappingProxyType(found)


async def _load(app: web.Application) -> None:
    app[ASSETS] = await asyncio.to_thread(load_assets)


async def _redirect(request: web.Request) -> web.StreamResponse:
    # Relative, so it also holds behind a proxy that mounts the gateway under a prefix.
    return web.Response(status=308, headers={"Location": "dashboard/"})


async def _asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("name") or "index.html"
    asset = request.config_dict[ASSETS].get(name)
    if asset is None:
        raise web.HTTPNotFound()
    matches = request.if_none_match or ()
    if any(tag.value in (asset.etag, "*") for tag in matches):
        response = web.Response(status=304, headers=HEADERS)
    else:
        response = web.Response(
            body=asset.body, content_type=asset.content_type, charset="utf-8", headers=HEADERS
        )
    response.etag = asset.etag
    return response


def add_dashboard_routes(app: web.Application) -> None:
    """Serve the page at /dashboard/ (and /dashboard, redirected), its assets beside it."""
    app.on_startup.append(_load)
    app.router.add_get(PATH, _redirect)
    app.router.add_get(PATH + "/", _asset)
    app.router.add_get(PATH + "/{name}", _asset)
