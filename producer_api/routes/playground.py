"""``GET /playground`` (also ``/web``, as Kokoro-FastAPI names it): a page to try the service on, served without a key.

The page is one file in the package (producer_api/web/playground.html: HTML, its script and its style inline); it
calls the API it came from with relative URLs and the key typed into it. The Content-Security-Policy allows nothing
but this origin, the page's own inline script and style (by their SHA-256), blob: audio and its empty data: icon, so the page cannot load
or send anything elsewhere even if it were edited to.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["playground"])

_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


@cache
def page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy."""
    html = resources.files("producer_api").joinpath("web/playground.html").read_text(encoding="utf-8")
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, body in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    policy = "; ".join([
        "default-src 'none'",
        f"script-src {' '.join(hashes['script'])}",
        f"style-src {' '.join(hashes['style'])}",
        "connect-src 'self'",
        "media-src 'self' blob:",
        "img-src 'self' data:",  # the page's empty icon (data:,), which spares the browser a /favicon.ico 404
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])
    return html.encode(), policy


@router.get("/playground", response_class=HTMLResponse, include_in_schema=False)
@router.get("/web", response_class=HTMLResponse, include_in_schema=False)
@router.get("/web/", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    body, policy = page()
    return HTMLResponse(body, headers={"Content-Security-Policy": policy, "Cache-Control": "no-cache",
                                       "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})
