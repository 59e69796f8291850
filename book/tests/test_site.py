"""The book as a reader uses it: every chapter page in a real browser, the framework tabs, search,
the links to the API page and to the references."""

import html.parser
import re

from conftest import FRAMEWORKS, SHOTS, SITE, chapter_pages

CHECKED = """() => [...document.querySelectorAll('.sd-tab-set')]
    .map(set => set.querySelector(':scope > input:checked + label').dataset.syncId)"""
SHOWN = """() => [...document.querySelectorAll('.sd-tab-content')].filter(c => c.checkVisibility())
    .map(c => c.previousElementSibling.dataset.syncId)"""
FIGURES = """() => [...document.querySelectorAll('img.cell-figure')].filter(i => i.checkVisibility())
    .map(i => i.getAttribute('src'))"""
MATH = """() => {
    const math = [...document.querySelectorAll('.math')];
    return {total: math.length,
            untypeset: math.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 60)),
            errors: [...document.querySelectorAll('mjx-merror, [data-mjx-error], [data-mml-node=merror]')]
                .map(e => e.getAttribute('data-mjx-error') || e.textContent)};
}"""


class Links(html.parser.HTMLParser):
    """Collects the hrefs of <a> elements inside <article> (the page's text) that contain `fragment`."""

    def __init__(self, fragment):
        super().__init__()
        self.fragment, self.depth, self.found = fragment, 0, set()

    def handle_starttag(self, tag, attrs):
        self.depth += tag == "article"
        href = dict(attrs).get("href") or ""
        if tag == "a" and self.depth and self.fragment in href:
            self.found.add(href)

    def handle_endtag(self, tag):
        self.depth -= tag == "article"


def load_figures(page):
    """Scroll every figure of the shown framework into view and wait until it has loaded."""
    figures = page.locator("img.cell-figure:visible")
    for i in range(figures.count()):
        figures.nth(i).scroll_into_view_if_needed()
        page.wait_for_function("i => i.complete", arg=figures.nth(i).element_handle())
    return page.evaluate("""() => [...document.querySelectorAll('img.cell-figure')].filter(i => i.checkVisibility())
        .filter(i => !(i.naturalWidth > 0)).map(i => i.getAttribute('src'))""")


def choose(page, backend, tab_set=0):
    page.locator(".sd-tab-set").nth(tab_set).locator(f"label[data-sync-id={backend}]").click()


def test_index_lists_every_chapter_and_says_how_to_choose(visit):
    v = visit()
    page = v.goto("index.html")
    links = page.eval_on_selector_all("article a.reference.internal", "as => as.map(a => a.getAttribute('href'))")
    assert chapter_pages() and all(p in links for p in chapter_pages())
    assert "?backend=" in page.inner_text("article")
    page.screenshot(path=SHOTS / "index.png", full_page=True)
    v.assert_clean()


def test_chapter_page(visit, chapter):
    """Loads cleanly; all math typeset; every framework's figures load; progress bars show their end."""
    v = visit()
    page = v.goto(chapter)
    v.assert_clean()
    math = page.evaluate(MATH)
    assert not math["untypeset"] and not math["errors"], math
    for backend in FRAMEWORKS:
        choose(page, backend)
        assert set(page.evaluate(CHECKED)) == {backend}
        assert not load_figures(page), f"figures that did not load on {backend}"
    bars = re.findall(r"(\d+)%\|", page.eval_on_selector_all("pre", "ps => ps.map(p => p.textContent).join()"))
    assert all(b == "100" for b in bars), f"progress bars stopped short: {bars}"
    v.assert_clean()


def test_choosing_jax_in_one_cell_switches_the_page_and_persists(visit):
    v = visit()
    first, second = chapter_pages()[:2]
    page = v.goto(first)
    sets = page.locator(".sd-tab-set").count()
    assert sets >= 2 and page.evaluate(CHECKED) == ["torch"] * sets  # PyTorch until the reader chooses
    torch_figures = page.evaluate(FIGURES)
    choose(page, "jax", tab_set=sets // 2)
    assert page.evaluate(CHECKED) == ["jax"] * sets
    assert page.evaluate(SHOWN) == ["jax"] * sets
    figures = page.evaluate(FIGURES)
    assert all("/jax-" in src or "/all-" in src for src in figures), figures
    ran = page.locator("a.notebook-link:visible")
    if ran.count():  # JAX ran this chapter: its own notebook, and its own figures wherever PyTorch has its own
        assert ran.get_attribute("href") == f"notebooks/jax/{first.removesuffix('.html')}.ipynb"
        assert any("/jax-" in src for src in figures) == any("/torch-" in src for src in torch_figures)
    if figures:
        page.locator("img.cell-figure:visible").first.scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / "chapter-jax.png")
    page.click("a.next-page")
    page.wait_for_url(f"**/{second}")
    assert set(page.evaluate(CHECKED)) == {"jax"}
    v.assert_clean()


def test_address_preselects_mxnet(visit):
    v = visit()
    chapter = chapter_pages()[-1]
    page = v.goto(f"{chapter}?backend=mxnet")
    assert set(page.evaluate(CHECKED)) == {"mxnet"}
    assert set(page.evaluate(SHOWN)) == {"mxnet"}
    assert "MXNet" in page.locator(".sd-tab-content:visible").first.inner_text()
    page.screenshot(path=SHOTS / "chapter-mxnet.png")
    v.assert_clean()


def test_notebook_link_is_the_chosen_frameworks_run(visit):
    v = visit()
    chapter = chapter_pages()[0]
    page = v.goto(chapter)
    for backend in FRAMEWORKS:
        choose(page, backend)
        links = page.locator("a.notebook-link:visible")
        if links.count():
            href = links.get_attribute("href")
            assert href == f"notebooks/{backend}/{chapter.removesuffix('.html')}.ipynb"
            notebook = page.request.get(v.server + href).json()
            assert any(c.get("outputs") for c in notebook["cells"])
    assert page.request.get(v.server + f"sources/{chapter.removesuffix('.html')}.md").ok
    v.assert_clean()


def test_figures_keep_their_shape_and_fit_a_narrow_screen(visit):
    """Width and height are known before a figure loads (no jumps), and it scales down to the screen."""
    v = visit(viewport={"width": 360, "height": 740})
    pages = [p for p in chapter_pages() if "cell-figure" in (SHOTS.parent / "html" / p).read_text()]
    assert pages, "no chapter has a figure"
    page = v.goto(pages[0])
    boxes = page.evaluate("""() => [...document.querySelectorAll('img.cell-figure')].filter(i => i.checkVisibility())
        .map(i => ({w: +i.getAttribute('width'), h: +i.getAttribute('height'), lazy: i.loading,
                    box: i.getBoundingClientRect().toJSON(), loaded: i.complete,
                    room: document.documentElement.clientWidth}))""")
    assert boxes and not all(b["loaded"] for b in boxes), "expected figures below the fold still to load"
    for b in boxes:
        assert b["lazy"] == "lazy" and b["w"] > 0 and b["h"] > 0
        assert 0 < b["box"]["width"] <= b["room"]
        assert abs(b["box"]["height"] - b["box"]["width"] * b["h"] / b["w"]) < 1.5, b
    page.locator("img.cell-figure:visible").first.scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / "narrow.png")
    v.assert_clean()


def test_search_finds_a_chapter(visit):
    v = visit()
    chapter = chapter_pages()[0]
    title = v.goto(chapter).inner_text("h1")
    word = max(re.findall(r"[A-Za-z]+", title), key=len)
    page = v.goto(f"search.html?q={word}")
    page.wait_for_selector(f"#search-results a[href*='{chapter.removesuffix('.html')}']")
    v.assert_clean()


def links(page_name, fragment):
    """The hrefs in the text of the built page `page_name` that contain `fragment`."""
    finder = Links(fragment)
    finder.feed((SITE / page_name).read_text())
    return finder.found


def test_api_links_from_chapters_land_on_their_entries(visit):
    """A chapter's link to a name goes to that name's entry on the API page, and the browser gets there."""
    targets = {href: chapter for chapter in chapter_pages() for href in links(chapter, "api.html#")}
    assert targets, "no chapter links to the API page"
    v = visit()
    page = v.goto("api.html")
    entries = page.eval_on_selector_all("dt.sig[id]", "ds => ds.map(d => [d.id, d.innerText])")
    signatures = {anchor: text for anchor, text in entries}
    for href, chapter in targets.items():
        anchor = href.split("#", 1)[1]
        assert anchor in signatures, f"{chapter} links to {href}, which the API page does not have"
        assert anchor.rsplit(".", 1)[1] in signatures[anchor], (anchor, signatures[anchor])
    href = "api.html#d2lattn.api.RotaryPositionalEncoding"
    page = v.goto(targets[href])
    link = page.locator(f"a[href='{href}']").first
    link.scroll_into_view_if_needed()
    page.wait_for_load_state("networkidle")  # the figures around it have loaded before the page is left
    link.click()
    page.wait_for_url(f"**/{href}")
    page.wait_for_load_state("load")
    anchor = href.split("#", 1)[1]
    entry = page.locator(f"[id='{anchor}']")
    assert entry.is_visible() and "head_size" in entry.inner_text()
    page.wait_for_function("id => Math.abs(document.getElementById(id).getBoundingClientRect().top) < 200",
                           arg=anchor, timeout=5000)  # the browser scrolled to the entry
    page.screenshot(path=SHOTS / "api.png")
    v.assert_clean()


def test_citations_link_to_their_bibliography_entries(visit):
    """Every citation in a chapter links to an entry of the references page; the list holds the cited works."""
    cited = {href for chapter in chapter_pages() for href in links(chapter, "references.html#")}
    assert cited, "no chapter cites a work"
    v = visit()
    page = v.goto("references.html")
    entries = dict(page.eval_on_selector_all("[role=doc-biblioentry][id]", "es => es.map(e => [e.id, e.innerText])"))
    assert {href.split("#", 1)[1] for href in cited} == set(entries)
    assert any("Attention Is All You Need".lower() in text.lower() for text in entries.values())
    page.screenshot(path=SHOTS / "references.png", full_page=True)
    v.assert_clean()
