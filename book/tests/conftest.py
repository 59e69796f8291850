"""The built site (build/html/) served on 127.0.0.1, read by Debian's Chromium through Playwright.

Playwright drives the system browser (never a downloaded one). Every page a test opens records
console errors, failed requests and requests to any host but the test's own server; requests
that would leave the machine are aborted.
"""

import functools
import http.server
import pathlib
import sys
import threading
import urllib.parse

import pytest
from playwright.sync_api import sync_playwright

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # d2lattn._backend, which imports no framework
from d2lattn import _backend  # noqa: E402

SITE = ROOT / "build" / "html"
SHOTS = ROOT / "build" / "book-test"
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if pathlib.Path(p).exists()), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
FRAMEWORKS = {b: _backend.DISPLAY_NAMES[b] for b in _backend.BOOK_TABS}  # {backend: tab title}, d2l's order


def chapter_pages():
    return sorted(p.name for p in SITE.glob("[0-9][0-9]_*.html"))


def pytest_generate_tests(metafunc):
    if "chapter" in metafunc.fixturenames:
        metafunc.parametrize("chapter", chapter_pages())


@pytest.fixture(scope="session")
def site():
    assert (SITE / "index.html").exists(), "no build/html/index.html: run `nox -s book` first"
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SITE


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def server(site):
    """The site over HTTP on a free port of 127.0.0.1: its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(scope="session")
def browser():
    assert CHROMIUM, "no Chromium at /usr/lib/chromium/chromium or /usr/bin/chromium: apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


class Visit:
    """A fresh browser context (empty local storage) whose page records what went wrong."""

    def __init__(self, browser, server, **options):
        self.server, self.errors, self.failed, self.foreign = server, [], [], []
        self.context = browser.new_context(**options)
        self.context.route("**/*", self.route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.failed.append(f"{r.url}: {r.failure}"))
        self.page.on("response", lambda r: r.status >= 400 and self.failed.append(f"{r.url}: HTTP {r.status}"))

    def route(self, route):
        url = urllib.parse.urlsplit(route.request.url)
        if url.scheme in ("data", "blob") or route.request.url.startswith(self.server):
            route.continue_()
        else:
            self.foreign.append(route.request.url)
            route.abort()

    def goto(self, path):
        self.page.goto(self.server + path, wait_until="load")  # scripts have run, or failed, by then
        self.page.evaluate("() => window.MathJax?.startup?.promise")  # typesetting done, where MathJax is
        return self.page

    def assert_clean(self):
        assert not self.foreign, f"requests to other hosts: {self.foreign}"
        assert not self.failed, f"failed requests: {self.failed}"
        assert not self.errors, f"console errors: {self.errors}"


@pytest.fixture
def visit(browser, server):
    visits = []

    def open_(**options):
        visits.append(Visit(browser, server, **options))
        return visits[-1]

    yield open_
    for v in visits:
        v.context.close()
