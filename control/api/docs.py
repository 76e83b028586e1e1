"""Interactive API docs at `/docs`: Swagger UI on the service's own `/openapi.json`, its assets
shipped in the package (`swagger-ui-bundle-v2`), so it works on networks without a CDN."""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import Response
from fastapi.responses import HTMLResponse
from swagger_ui_bundle import swagger_ui_path

from control.errors import NotFound

_SWAGGER = Path(swagger_ui_path)
_OWN = Path(__file__).resolve().parent / "docs_assets"
# Served by name from this list only: a path parameter never reaches the file system.
ASSETS: dict[str, tuple[Path, str]] = {
    "swagger-ui.css": (_SWAGGER / "swagger-ui.css", "text/css; charset=utf-8"),
    "swagger-ui-bundle.js": (_SWAGGER / "swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "favicon-32x32.png": (_SWAGGER / "favicon-32x32.png", "image/png"),
    "init.js": (_OWN / "init.js", "text/javascript; charset=utf-8"),
}
# Swagger UI styles elements inline and shows its logo as a data: image; nothing else is loaded
# from anywhere but here.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>control API</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/docs/assets/init.js"></script>
</body>
</html>
"""


async def api_docs() -> HTMLResponse:
    return HTMLResponse(_PAGE, headers={"Content-Security-Policy": _CSP})


@functools.cache
def _asset(name: str) -> bytes:
    return ASSETS[name][0].read_bytes()


async def api_docs_asset(asset: str) -> Response:
    if asset not in ASSETS:
        raise NotFound("asset")
    return Response(
        _asset(asset),
        media_type=ASSETS[asset][1],
        headers={"Cache-Control": "public, max-age=86400"},
    )
