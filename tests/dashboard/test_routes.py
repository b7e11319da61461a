"""Serving the API Keys page over HTTP: the routes, the headers, the assets in the package."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from html.parser import HTMLParser
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as redis
from aiohttp import web

from spendgate.dashboard import routes
from spendgate.enforcement.windows import MAX_EVERY
from tests.helpers import AdminClient

STATIC = Path(routes.__file__).parent / "static"
PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


@pytest.fixture
async def browser_client(
    aiohttp_client: Callable[..., Awaitable[AdminClient]],
    app: web.Application,
    db: asyncpg.Connection,
    raw_redis: redis.Redis,
) -> AsyncIterator[AdminClient]:
    """A client without the admin token, as a browser first comes to the page."""
    client = await aiohttp_client(app)
    yield client
    await client.close()


class Page(HTMLParser):
    """What index.html pulls in and anything that would run or style inline."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str | None] = []
        self.links: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name, _ in attrs:
            if name.startswith("on") or name == "style":
                self.inline.append(f"<{tag} {name}>")
        if tag == "script":
            self.scripts.append(found.get("src"))
            self._in_script = True
        if tag == "link" and found.get("href"):
            self.links.append(str(found["href"]))
        if tag == "style":
            self.inline.append("<style>")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("<script> with a body")


async def test_the_page_is_served_without_a_token_under_a_strict_policy(
    browser_client: AdminClient,
) -> None:
    response = await browser_client.get("/dashboard/")
    assert response.status == 200
    assert response.content_type == "text/html"
    assert response.charset == "utf-8"
    policy = response.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["form-action"] == "'none'"
    assert "unsafe" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-cache"

    page = Page()
    page.feed(await response.text())
    assert page.inline == []
    assert page.scripts == ["app.js"]
    for asset in [*page.scripts, *page.links]:
        assert asset is not None
        served = await browser_client.get(f"/dashboard/{asset}")
        assert served.status == 200, asset
        assert "Content-Security-Policy" in served.headers


async def test_every_module_the_page_imports_is_served_as_javascript(
    browser_client: AdminClient,
) -> None:
    seen: set[str] = set()
    waiting = ["app.js"]
    while waiting:
        name = waiting.pop()
        seen.add(name)
        response = await browser_client.get(f"/dashboard/{name}")
        assert response.status == 200, name
        assert response.content_type == "text/javascript"
        text = await response.text()
        assert "innerHTML" not in text and "eval(" not in text, name
        imports = re.findall(r'from "\./([a-z]+\.js)";', text)
        waiting += [module for module in imports if module not in seen]
    assert seen == {path.name for path in STATIC.glob("*.js")}  # no file left unused


async def test_the_bare_path_redirects_and_unknown_assets_are_not_found(
    browser_client: AdminClient,
) -> None:
    response = await browser_client.get("/dashboard", allow_redirects=False)
    assert response.status == 308
    assert response.headers["Location"] == "dashboard/"
    followed = await browser_client.get("/dashboard")
    assert followed.url.path == "/dashboard/"
    assert followed.content_type == "text/html"
    for path in ["/dashboard/nope.js", "/dashboard/routes.py", "/dashboard/..%2Froutes.py"]:
        missing = await browser_client.get(path)
        assert missing.status == 404, path
        assert (await missing.json())["error"]["code"] == "not_found"


async def test_a_revalidated_asset_is_not_sent_again(browser_client: AdminClient) -> None:
    first = await browser_client.get("/dashboard/app.js")
    etag = first.headers["ETag"]
    again = await browser_client.get("/dashboard/app.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""
    assert again.headers["ETag"] == etag
    stale = await browser_client.get("/dashboard/app.js", headers={"If-None-Match": '"old"'})
    assert stale.status == 200
    assert await stale.read() == (STATIC / "app.js").read_bytes()


def test_the_page_bounds_recurring_windows_as_the_server_does() -> None:
    source = (STATIC / "forms.js").read_text(encoding="utf-8")
    found = re.search(r"export const MAX_EVERY = \{([^}]*)\};", source)
    assert found is not None
    pairs = re.findall(r"(\w+): (\d+)", found.group(1))
    assert {unit: int(every) for unit, every in pairs} == MAX_EVERY


def test_every_asset_is_package_data() -> None:
    """A wheel carries what pyproject.toml's package-data globs name, nothing more."""
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["spendgate"]
    package = STATIC.parents[1]
    for path in STATIC.iterdir():
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in globs), relative
    assert set(routes.load_assets()) == {path.name for path in STATIC.iterdir()}
