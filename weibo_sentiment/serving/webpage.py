"""The analyst's page, served by the API server at ``/``: static HTML, CSS and JavaScript from ``page/``.

The page calls the same JSON API (``/api/sentiment``) from the browser, in requests of at most ``max_texts`` posts.
Its settings (the API's path and limits, whether a key is needed) are written into the HTML as data attributes, and
its Content-Security-Policy lets it load and call nothing but this server.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from weibo_sentiment.settings import ServeSettings

PAGE_DIR = Path(__file__).resolve().parent / "page"
MAX_FILE_BYTES = 50_000_000  # what the page reads from one file (a browser holds it all in memory)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def add_page(app: FastAPI, settings: ServeSettings, api_path: str) -> None:
    """Serve the page at ``/`` (in place of LitServe's "litserve running") and its script and style at ``/page/``."""
    html = (PAGE_DIR / "index.html").read_text(encoding="utf-8")
    for name, value in {"__API_PATH__": api_path, "__MAX_TEXTS__": settings.max_texts,
                        "__MAX_CHARS__": settings.max_chars, "__KEY_REQUIRED__": str(bool(settings.api_key)).lower(),
                        "__MAX_FILE_BYTES__": MAX_FILE_BYTES}.items():  # fmt: skip
        html = html.replace(name, str(value))
    app.router.routes[:] = [route for route in app.router.routes if getattr(route, "path", None) != "/"]

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(html, headers=SECURITY_HEADERS)

    app.mount("/page", StaticFiles(directory=PAGE_DIR), name="page")
