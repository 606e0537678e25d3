"""The web pages: lobby, watch, creator studio, stream overlay and the dev-only demo-token page.

Static HTML, CSS and JavaScript modules shipped in gifting/web/static (no build step). The pages speak the same
public HTTP API and websocket protocol as every other client (docs/PROTOCOL.md); they read the signed token
from the URL fragment (`#token=...`), which never reaches the server or a Referer header.
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"
# A Host header that is a host name or IP literal with an optional port, and nothing else: only such a value
# is ever written into a header (a Host of "x; script-src *" would add a CSP directive).
HOST_PATTERN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def security_headers(request: Request) -> dict[str, str]:
    """Pages load only what the package ships (no fonts, scripts or images from anywhere else) and are never
    framed (clickjacking)."""
    host = request.headers.get("host", "")
    # CSP Level 3 browsers match ws:/wss: to the page's own host under 'self'; older ones need it named.
    sockets = f" ws://{host} wss://{host}" if HOST_PATTERN.fullmatch(host) else ""
    csp = "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "font-src 'self'",
            f"connect-src 'self'{sockets}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


def loopback_host(request: Request) -> bool:
    """The request names this machine by a loopback name: dev endpoints refuse any other Host, so a web page
    on another origin whose name resolves here (DNS rebinding) cannot mint tokens."""
    host = request.headers.get("host", "")
    if not HOST_PATTERN.fullmatch(host):
        return False
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.lower() in LOOPBACK_HOSTS


class StaticAssets(StaticFiles):
    """Scripts, styles, icons and gift art, with the pages' headers. The pages themselves (*.html) are served
    only by their routes, which add the same headers and apply the dev-mode check."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if path.lower().endswith((".html", ".htm")):
            return HTMLResponse("Not found: pages live at their own URLs (/, /watch/..., /studio)", status_code=404)
        response = await super().get_response(path, scope)
        response.headers.update(security_headers(Request(scope)))
        return response


async def lobby(request: Request) -> Response:
    return _html(request, "index.html")


async def watch(request: Request) -> Response:
    return _html(request, "watch.html")


async def studio(request: Request) -> Response:
    return _html(request, "studio.html")


async def brand(request: Request) -> Response:
    """A brand's sponsored-gift campaigns and their reports."""
    return _html(request, "brand.html")


async def overlay(request: Request) -> Response:
    return _html(request, "overlay.html")


async def dev(request: Request) -> Response:
    """The demo-token page exists only in dev mode (GIFTING_DEV), like GET /dev/token."""
    if not request.app.state.settings.dev_mode:
        return HTMLResponse(
            "<!doctype html><title>Not found</title><p>Not found: the demo-token page exists only in dev mode "
            "(GIFTING_DEV is not set). Sign in through the platform.</p>",
            status_code=404,
            headers=security_headers(request),
        )
    if not loopback_host(request):
        return HTMLResponse(
            "<!doctype html><title>Forbidden</title><p>The demo-token page answers only at localhost, 127.0.0.1 "
            "or [::1].</p>",
            status_code=403,
            headers=security_headers(request),
        )
    return _html(request, "dev.html")


def _html(request: Request, name: str) -> Response:
    return FileResponse(STATIC_DIR / name, media_type="text/html", headers=security_headers(request))


routes: list[BaseRoute] = [
    Route("/", lobby, methods=["GET", "HEAD"]),
    Route("/watch/{room}", watch, methods=["GET", "HEAD"]),
    Route("/studio", studio, methods=["GET", "HEAD"]),
    Route("/brand", brand, methods=["GET", "HEAD"]),
    Route("/overlay/{room}", overlay, methods=["GET", "HEAD"]),
    Route("/dev", dev, methods=["GET", "HEAD"]),
    Mount("/static", app=StaticAssets(directory=STATIC_DIR), name="static"),
]
