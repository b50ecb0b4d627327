"""`GET /docs`: the OpenAPI (Swagger UI) page of the service, at an address of its own.

BentoML 1.4 serves the OpenAPI spec at `GET /docs.json` and shows it with Swagger UI at `GET /`;
cosa-sdk's own page takes `/`, so the Swagger UI moves here. The page loads the Swagger UI files
BentoML already serves under `/static_content/` (nothing is fetched from the internet) and points
them at `/docs.json`. The spec lists every endpoint, its form fields and its answers, plus
BentoML's own `/livez`, `/readyz` and `/metrics` (Prometheus).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

DOCS_PATH = "/docs"
SPEC_PATH = "/docs.json"
STATIC = "/static_content"

PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cosa-sdk segmentation API</title>
<link rel="stylesheet" href="{STATIC}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{STATIC}/swagger-ui-bundle.js"></script>
<script src="{STATIC}/swagger-ui-standalone-preset.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: "{SPEC_PATH}",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "BaseLayout",
}});
</script>
</body>
</html>
"""


async def docs_page(_: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


# Mounted at "/" by the service: BentoML's PassiveMount only takes the paths this app has a route for.
docs_app = Starlette(routes=[Route(DOCS_PATH, docs_page, methods=["GET"])])
