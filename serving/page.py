"""`GET /`: the upload page for people (pick or drop an image, see the overlay, legend and mask).

BentoML 1.4 puts its own OpenAPI page at `/`; `CosaSegmentation` mounts `page_app` (with
`mount_asgi_app`, whose apps are matched before BentoML's index route), so `/` is this page and
the Swagger UI moves to `/docs` (`serving/docs.py`). The page is one self-contained file,
`page.html`, shipped as package data: no CDN, no build step. It calls the public endpoints
(`/info`, `/segment_json?mask=png`, `/overlay`) like any other client.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

PAGE_FILE = "page.html"
PAGE_PATH = "/"
# Everything the page loads comes from this server; its inline script and style are its own.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
        "img-src 'self' blob: data:; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
    ),
}


@lru_cache(maxsize=1)
def page_html() -> str:
    """The upload page, read once per process from the installed package."""
    return resources.files(__package__).joinpath(PAGE_FILE).read_text(encoding="utf-8")


async def upload_page(_: Request) -> HTMLResponse:
    return HTMLResponse(page_html(), headers=PAGE_HEADERS)


# Mounted at "/" by the service: BentoML's PassiveMount only takes the paths this app has a route for.
page_app = Starlette(routes=[Route(PAGE_PATH, upload_page, methods=["GET"], name="upload_page")])
