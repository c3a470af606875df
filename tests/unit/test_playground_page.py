"""``GET /web``: the playground page is served without a key, is one self-contained file, and refers to nothing but
this origin (its Content-Security-Policy says so to the browser as well)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from producer_api.app import create_app
from producer_api.auth import new_token
from voicenote.settings import ApiKey, ApiSettings, Settings


class _Refs(HTMLParser):
    """Every URL-valued attribute, and the ids, of the page's elements."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.ids: set[str] = set()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "action", "poster", "srcset", "data", "formaction") and value is not None:
                self.refs.append((tag, name, value))
            if name == "id" and value:
                self.ids.add(value)


@pytest.fixture(scope="module")
def client() -> TestClient:
    # With keys configured: the page must still answer without one. No lifespan (no `with`): the page needs no backend.
    _, digest = new_token()
    app = create_app(Settings(api=ApiSettings(keys=[ApiKey(name="someone", sha256=digest)])))
    return TestClient(app)


@pytest.mark.parametrize("path", ["/web", "/web/"])
def test_page_is_served_without_a_key(client: TestClient, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert "<title>Voicenote playground</title>" in resp.text


def test_page_has_the_controls_and_calls_the_api(client: TestClient) -> None:
    html = client.get("/web").text
    parser = _Refs()
    parser.feed(html)
    assert {"key", "text", "model", "voice", "format", "speed", "speak", "error", "audio", "ttfb", "total", "bytes",
            "download", "queue", "async-status"} <= parser.ids
    for path in ("../v1/audio/speech", "../v1/models", "../v1/audio/voices", "../v1/audio/speech/async", "../v1/jobs/"):
        assert f'"{path}' in html, path
    # Every format the API takes can be picked.
    from schemas.validation import FORMATS

    assert set(re.findall(r'<option value="(\w+)"', html)) == set(FORMATS)
    assert '"Authorization"' in html and '"Bearer "' in html


def test_page_refers_only_to_its_own_origin(client: TestClient) -> None:
    html = client.get("/web").text
    parser = _Refs()
    parser.feed(html)
    assert parser.refs, "the page has links; the parser should have seen them"
    for tag, attr, value in parser.refs:
        if (tag, attr, value) == ("link", "href", "data:,"):  # the empty icon: no request at all
            continue
        assert not re.match(r"^([a-z][a-z0-9+.-]*:|//)", value, re.I), f"<{tag} {attr}={value!r}> is not same-origin"
    # Nothing loaded from elsewhere: no external script, stylesheet, font, or absolute URL anywhere in the file.
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I), re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I)
    assert "<script src" not in html and html.count("<link") == 1 and "@import" not in html and "url(" not in html


def test_content_security_policy_allows_only_this_origin(client: TestClient) -> None:
    resp = client.get("/web")
    policy = dict(part.strip().split(" ", 1) for part in resp.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'"
    assert policy["media-src"] == "'self' blob:"
    # The inline script and style are allowed by their hashes, not by 'unsafe-inline'.
    assert re.fullmatch(r"'sha256-[A-Za-z0-9+/=]+'", policy["script-src"])
    assert re.fullmatch(r"'sha256-[A-Za-z0-9+/=]+'", policy["style-src"])
    assert "unsafe" not in resp.headers["content-security-policy"]


def test_page_is_not_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/web" not in paths and "/web/" not in paths
