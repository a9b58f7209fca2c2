"""The live page of the market at /app/: static files the API serves itself.

The page (api/web/: plain JavaScript modules, no build step) and its one library, TradingView's
lightweight-charts, which `make setup` installs with npm from api/vendor/package-lock.json into
api/vendor/node_modules (git-ignored; the Dockerfile does the same in a node stage). Both come
from this server, never from a CDN, so the page works on a machine without internet.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

PAGE_PATH = "/app"
_HERE = Path(__file__).resolve().parent
WEB_DIR = _HERE / "web"
# Only the library's built files are served, not the rest of node_modules.
CHART_LIBRARY_DIR = _HERE / "vendor" / "node_modules" / "lightweight-charts" / "dist"


def mount_page(app: FastAPI) -> None:
    """The library under /app/vendor/, the page under /app/ (index.html at /app/), and / sends
    a browser there (outside the OpenAPI document: it is no operation of the API).

    The library's directory may be missing (npm never ran): the API still starts, its files
    answer 404 and the page says to run `make setup` instead of showing an empty chart.
    """
    app.mount(
        f"{PAGE_PATH}/vendor",
        StaticFiles(directory=CHART_LIBRARY_DIR, check_dir=False),
        name="page-vendor",
    )
    app.mount(PAGE_PATH, StaticFiles(directory=WEB_DIR, html=True), name="page")
    app.add_route("/", _to_the_page, include_in_schema=False)


async def _to_the_page(request: Request) -> RedirectResponse:
    return RedirectResponse(f"{PAGE_PATH}/", status_code=307)
