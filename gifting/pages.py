"""The web pages: lobby, watch, creator studio, stream overlay and the dev-only demo-token page.

Static HTML, CSS and JavaScript modules shipped in gifting/static (no build step). The pages speak the same
public HTTP API and websocket protocol as every other client (docs/PROTOCOL.md); they read the signed token
from the URL fragment (`#token=...`), which never reaches the server or a Referer header.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"


def security_headers(request: Request) -> dict[str, str]:
    """Pages load only what the package ships: no fonts, scripts or images from anywhere else."""
    host = request.headers.get("host", "")
    csp = "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "font-src 'self'",
            f"connect-src 'self' ws://{host} wss://{host}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ]
    )
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


async def lobby(request: Request) -> Response:
    return _html(request, "index.html")


async def watch(request: Request) -> Response:
    return _html(request, "watch.html")


async def studio(request: Request) -> Response:
    return _html(request, "studio.html")


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
    return _html(request, "dev.html")


def _html(request: Request, name: str) -> Response:
    return FileResponse(STATIC_DIR / name, media_type="text/html", headers=security_headers(request))


routes: list[BaseRoute] = [
    Route("/", lobby, methods=["GET", "HEAD"]),
    Route("/watch/{room}", watch, methods=["GET", "HEAD"]),
    Route("/studio", studio, methods=["GET", "HEAD"]),
    Route("/overlay/{room}", overlay, methods=["GET", "HEAD"]),
    Route("/dev", dev, methods=["GET", "HEAD"]),
    Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
]
