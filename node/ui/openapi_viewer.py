"""The OpenAPI viewer at ``/schema``, served whole by the node: it works offline.

Litestar's own render plugins load Swagger UI from a CDN and start it with an inline script
that holds the whole document. Here the page is a shell of ``<link>`` and ``<script src>``
tags only: Swagger UI's files come from the installed ``swagger-ui-bundle-v2`` package
(Apache-2.0; its licence is served beside them), the few lines that start it from
``viewer/agora-swagger.js``, and the document from ``/schema/openapi.json``. So the page
needs nothing from another host and nothing inline, and the ``/schema`` policy in
:mod:`node.headers` allows scripts, styles and requests from the node alone (plus ``data:``
images, which Swagger UI's stylesheet draws its icons with).

Only the files the viewer uses are served (a fixed list, not the package's directory).
"""

from __future__ import annotations

import html
from importlib import metadata
from pathlib import Path
from typing import Any

from litestar import Request, Router, get
from litestar.enums import MediaType
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.params import FromPath
from litestar.response import File

from kernel.errors import NotFound

OWN = Path(__file__).resolve().parent / "viewer"
DISTRIBUTION = "swagger-ui-bundle-v2"


def _assets() -> dict[str, tuple[Path, str]]:
    """Served name → (file, media type)."""
    from swagger_ui_bundle import swagger_ui_path

    bundle = Path(str(swagger_ui_path))
    licence = next(
        (Path(str(f.locate())) for f in metadata.files(DISTRIBUTION) or [] if f.name == "LICENSE"), None
    )
    assets = {
        "swagger-ui.css": (bundle / "swagger-ui.css", "text/css"),
        "swagger-ui-bundle.js": (bundle / "swagger-ui-bundle.js", "text/javascript"),
        "favicon-32x32.png": (bundle / "favicon-32x32.png", "image/png"),
        "agora-swagger.js": (OWN / "agora-swagger.js", "text/javascript"),
    }
    if licence is not None:
        assets["LICENSE"] = (licence, "text/plain")
    return assets


class OfflineSwagger(OpenAPIRenderPlugin):
    """Swagger UI from the node's own files (see the module docstring)."""

    def __init__(self, path: str = "/") -> None:
        super().__init__(path=path)
        self.assets = _assets()

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        base = request.app.openapi_config.path if request.app.openapi_config else "/schema"
        static = f"{base}/static"
        title = html.escape(str(openapi_schema["info"]["title"]))
        spec = html.escape(self.get_openapi_json_route(request))
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title} · API</title>
  <link rel="icon" type="image/png" href="{static}/favicon-32x32.png">
  <link rel="license" href="{static}/LICENSE">
  <link rel="stylesheet" href="{static}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui" data-spec="{spec}"></div>
  <script src="{static}/swagger-ui-bundle.js"></script>
  <script src="{static}/agora-swagger.js"></script>
</body>
</html>
""".encode()

    def receive_router(self, router: Router) -> None:
        assets = self.assets

        @get("/static/{name:str}", media_type=MediaType.TEXT, sync_to_thread=False, include_in_schema=False)
        def asset(name: FromPath[str]) -> File:
            if name not in assets:
                raise NotFound(f"no viewer file {name!r}")
            path, media_type = assets[name]
            return File(
                path,
                media_type=media_type,
                content_disposition_type="inline",
                headers={"cache-control": "max-age=3600"},
            )

        router.register(asset)
