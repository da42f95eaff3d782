"""The book builds with warnings as errors, and its pages work offline in a real browser (headless Chromium)."""
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="session")
def html(tmp_path_factory) -> Path:
    """The build of scripts/book.sh: chapters executed side by side into the cache, then the book built from it."""
    out = tmp_path_factory.mktemp("book")
    execute = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "execute_chapters.py"), "--cache", str(out / "_build" / ".jupyter_cache"),
         "--times", str(out / "chapter-times.json")],
        capture_output=True, text=True, cwd=ROOT,
    )
    print(execute.stdout)  # each chapter's time and longest cell, in the test log
    assert execute.returncode == 0, execute.stdout[-6000:] + execute.stderr[-3000:]
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run(
        [str(jb), "build", str(ROOT), "-W", "-n", "--keep-going", "--path-output", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    executed = json.loads((out / "chapter-times.json").read_text())["chapters"]
    log = proc.stdout + proc.stderr
    assert "Executing notebook" not in log and log.count("Using cached notebook") == len(executed), \
        "the build executed a chapter itself instead of taking it from the cache"
    return out / "_build" / "html"


def test_book_builds_without_warnings(html):
    page = (html / "notebooks" / "quickstart.html").read_text()
    assert "<img" in page  # the executed notebook's figure is in the page


def test_every_chapter_has_a_colab_button(html):
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        page = html / "notebooks" / f"{nb.stem}.html"
        if page.exists():  # only chapters listed in _toc.yml are built
            assert f"colab.research.google.com/github/" in page.read_text() and f"notebooks/{nb.stem}.ipynb" in page.read_text()


def test_pages_load_no_script_or_style_from_a_cdn(html):
    for page in html.rglob("*.html"):
        text = page.read_text()
        remote = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', text)
        remote = [u for u in remote if not u.startswith("https://github.com") and "colab" not in u]
        assert not remote, f"{page.relative_to(html)} loads {remote}"


def built_pages(html: Path) -> list[Path]:
    return sorted(p for p in html.rglob("*.html") if "_static" not in p.parts)


def test_no_page_repeats_an_id(html):
    for page in built_pages(html):
        ids = Counter(re.findall(r'\sid="([^"]+)"', page.read_text()))
        repeated = sorted(i for i, n in ids.items() if n > 1)
        assert not repeated, f"{page.relative_to(html)} repeats the ids {repeated}"


def test_pages_show_no_output_clutter(html):
    """No stray reprs of paths, no diffusers loading bars (tqdm widgets space their text with U+2007)."""
    found = []
    for page in built_pages(html):
        text = page.read_text().replace("\\u2007", " ").replace("\u2007", " ")
        found += [(str(page.relative_to(html)), c) for c in ("PosixPath(", "Loading pipeline components") if c in text]
    assert not found, found


def page_text(page: Path) -> str:
    """A page's HTML without its scripts, styles, code blocks and inline code: what the reader reads as prose."""
    text = page.read_text()
    for tag in ("script", "style", "pre", "code"):
        text = re.sub(rf"<{tag}\b.*?</{tag}>", " ", text, flags=re.S)
    return text


def test_no_page_shows_raw_math(html):
    """Every $$ ... $$ became an equation: a display formula glued into a paragraph stays raw text ("$$w(k) = ...")."""
    raw = {str(p.relative_to(html)): re.findall(r".{0,40}\$\$.{0,40}", page_text(p)) for p in built_pages(html)}
    raw = {k: v for k, v in raw.items() if v}
    assert not raw, raw


def shown_widget_models(text: str) -> set[str]:
    """Model names of every widget a page shows: each displayed view's model and, through "IPY_MODEL_" references,
    all the models inside it (the page's embedded widget state names them)."""
    state = re.search(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', text, flags=re.S)
    models = json.loads(state[1])["state"] if state else {}
    todo = re.findall(r'<script type="application/vnd.jupyter.widget-view\+json">(.*?)</script>', text, flags=re.S)
    todo, seen = [json.loads(v)["model_id"] for v in todo], set()
    while todo:
        mid = todo.pop()
        if mid in seen or mid not in models:
            continue
        seen.add(mid)
        todo += re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(models[mid]["state"]))
    return {models[m]["model_name"] for m in seen}


def test_no_page_shows_a_progress_bar(html):
    """No tqdm bar reached a page: neither a text bar ("100%|####| 3/3") nor a displayed progress widget."""
    found = {}
    for page in built_pages(html):
        text = page.read_text().replace("\\u2007", " ").replace("\u2007", " ")
        hits = re.findall(r".{0,30}\d+%\|.{0,30}|Loading weights", text)
        hits += sorted(m for m in shown_widget_models(text) if "Progress" in m)
        if hits:
            found[str(page.relative_to(html))] = hits[:3]
    assert not found, found


def test_result_tables_are_numbered_and_captioned(html):
    """Result tables are HTML tables with a number and a caption ("Table 10.2 ..."), not print output, and each is
    shown once: the copy show_table displays in its cell (for a live kernel) is not in the page."""
    tables = 0
    for page in built_pages(html):
        text = page.read_text()
        for fig in re.findall(r'<figure class="[^"]*result-table[^"]*".*?</figure>', text, flags=re.S):
            assert "<table" in fig and re.search(r'class="caption-number">Table \d+\.\d+', fig), fig[:300]
            tables += 1
        assert "table-in-place" not in text, f"{page.relative_to(html)} shows a table in its cell as well"
        bodies = Counter(re.sub(r'\s(?:id|class)="[^"]*"', "", b)
                         for b in re.findall(r"<tbody>.*?</tbody>", text, flags=re.S))
        repeated = [b[:200] for b, n in bodies.items() if n > 1]
        assert not repeated, f"{page.relative_to(html)} shows a table twice: {repeated}"
    assert tables >= 10


def test_figures_and_exercises_are_numbered_per_chapter(html):
    """"Exercise 5.2", not "Exercise 18": the first number is the chapter's own, so no one confuses it with the paper's."""
    numbered = 0
    for page in built_pages(html):
        text = page.read_text()
        chapter = re.search(r'<h1>\s*<span class="section-number">(\d+)\.\s*</span>', text)
        captions = re.findall(r'class="caption-number">\s*(?:Fig\.|Table|Exercise|Lemma|Proposition)\s+([\d.]+)', text)
        if not captions:
            continue
        assert chapter, f"{page.relative_to(html)} numbers {captions} but has no chapter number"
        assert all(c.startswith(chapter[1] + ".") for c in captions), f"{page.relative_to(html)}: {captions}"
        numbered += len(captions)
    assert numbered >= 10


def test_citations_and_bibliography_are_author_year(html):
    labels = re.findall(r'<span class="label"><span class="fn-bracket">\[</span>(.*?)<span class="fn-bracket">\]',
                        (html / "book" / "references.html").read_text())
    assert labels and all(re.fullmatch(r"\S.*, \d{4}", label) for label in labels), labels  # "Efron, 2011"
    cited = re.findall(r'href="references.html#[^"]+" title="[^"]*">(.*?)</a>', (html / "book" / "eq1.html").read_text())
    cited = {re.sub(r"<[^>]+>", "", c) for c in cited}  # "Elata <em>et al.</em>, 2023"
    assert cited and cited <= set(labels), (cited, labels)  # the text cites by the labels the bibliography shows


def page_weights(html: Path) -> dict[str, int]:
    return {str(p.relative_to(html)): p.stat().st_size for p in html.rglob("*.html") if "_static" not in p.parts}


def test_page_weight_is_reasonable(html):
    weights = page_weights(html)
    print("page weights (bytes):", json.dumps(weights, indent=1, sort_keys=True))
    heavy = {k: v for k, v in weights.items() if v > 3_000_000}
    assert not heavy, f"pages over 3 MB (precomputed slider frames?): {heavy}"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are required in CI (scripts/setup.sh installs them as root)")
        pytest.skip("chromium/chromedriver not installed (scripts/setup.sh installs them when run as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
        # the network is off: every request that is not a local file goes to a closed port and fails loudly
        "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}", "--window-size=1400,1000",
    ]:
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def visible_frames(driver) -> list[str]:
    """The src of every slider frame the reader can see now."""
    return driver.execute_script(
        "return [...document.querySelectorAll('.widget-stack img, .jupyter-widgets img')]"
        ".filter(i => i.offsetParent !== null && i.getBoundingClientRect().width > 0).map(i => i.src)"
    )


def frame_widths(driver) -> list[tuple[float, int]]:
    """(shown width, natural width) of every slider frame the reader can see now."""
    return driver.execute_script(
        "return [...document.querySelectorAll('.jupyter-widgets img')].filter(i => i.offsetParent !== null)"
        ".map(i => [i.getBoundingClientRect().width, i.naturalWidth])"
    )


SLIDER_PAGES = ["quickstart", "algorithm2", "train_your_own", "guided", "inverse", "previews"]
PHONE = 390  # CSS pixels: the width of a common phone


@pytest.fixture
def phone(browser):
    """The same browser, emulating a phone PHONE pixels wide (the page's viewport meta tag applies, as on a phone)."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": PHONE, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    yield browser
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def open_page(driver, page: Path) -> None:
    """Load a page and wait until MathJax has typeset it (its width depends on the typeset equations)."""
    driver.get(page.as_uri())
    driver.set_script_timeout(30)
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1], mj = window.MathJax;"
        "(mj && mj.startup && mj.startup.promise ? mj.startup.promise : Promise.resolve()).then(() => done(true));"
    )


def page_width(driver) -> int:
    return driver.execute_script("return document.documentElement.scrollWidth")


# Elements of the NFE sliders' output areas that scroll sideways (overflow auto/scroll, content wider than the box).
SCROLLING_IN_WIDGET_AREA = """
const areas = new Set([...document.querySelectorAll('.widget-slider')].map(w => w.closest('.cell_output') || w));
const found = [];
for (const area of areas) for (const e of [area, ...area.querySelectorAll('*')]) {
  const overflow = getComputedStyle(e).overflowX;
  if (e.scrollWidth > e.clientWidth && (overflow === 'auto' || overflow === 'scroll')) {
    found.push(`${e.tagName.toLowerCase()}.${e.className}: ${e.scrollWidth} > ${e.clientWidth}`);
  }
}
return found;
"""


@pytest.mark.parametrize("chapter", SLIDER_PAGES)
def test_nfe_slider_scrubs_frames_offline(html, browser, chapter):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get((html / "notebooks" / f"{chapter}.html").as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".noUi-handle"))
    WebDriverWait(browser, 30).until(lambda d: len(visible_frames(d)) >= 2)
    before = visible_frames(browser)
    handle = browser.find_element(By.CSS_SELECTOR, ".noUi-handle")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", handle)
    handle.click()
    for _ in range(10):
        handle.send_keys(Keys.ARROW_LEFT)
    WebDriverWait(browser, 10).until(lambda d: visible_frames(d) != before)
    after = visible_frames(browser)
    assert len(after) == len(before) and after != before
    assert all(shown <= natural for shown, natural in frame_widths(browser)), frame_widths(browser)  # never stretched
    assert not console_errors(browser)


def test_equations_render_offline(html, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get((html / "book" / "intro.html").as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.querySelectorAll('mjx-container').length") > 0)
    assert not console_errors(browser)


RESULT_TABLES = """
return [...document.querySelectorAll('figure.result-table')].map(f => {
  const box = f.querySelector('div.output') || f, table = f.querySelector('table');
  return [f.id, table ? table.scrollWidth : 0, box.clientWidth];
});
"""


def test_result_tables_fit_the_page_at_1280_px(html, browser):
    """At 1280 px every result table shows all its columns (none hides behind a scrollbar)."""
    browser.set_window_size(1280, 1000)
    clipped = {}
    for page in built_pages(html):
        if "result-table" not in page.read_text():
            continue
        open_page(browser, page)
        wide = [(i, w, box) for i, w, box in browser.execute_script(RESULT_TABLES) if w > box + 1]
        if wide:
            clipped[str(page.relative_to(html))] = wide
    browser.set_window_size(1400, 1000)
    assert not clipped, f"tables wider than their box at 1280 px (id, table px, box px): {clipped}"


# Output images (figures, not slider frames): (src, shown width, natural width, width of the box holding it, id of
# its figure) as laid out now.
FIGURE_SCALES = """
return [...document.querySelectorAll('.bd-article .cell_output img, .bd-article figure img')]
  .filter(i => !i.closest('.jupyter-widgets, .widget-stack') && i.naturalWidth > 0 && i.offsetParent !== null)
  .map(i => [i.src.split('/').pop(), i.getBoundingClientRect().width, i.naturalWidth, i.parentElement.clientWidth,
             (i.closest('figure') || {}).id || '']);
"""
# Figures load lazily (book_assets.py: only the layout the screen shows is fetched): load every shown one now.
LOAD_SHOWN_FIGURES = """
const done = arguments[arguments.length - 1];
const shown = [...document.querySelectorAll('.bd-article img')].filter(i => i.offsetParent !== null);
shown.forEach(i => { i.loading = 'eager'; });
Promise.all(shown.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; }))).then(() => done(true));
"""
MIN_FIGURE_SCALE = 0.4  # 9 pt text at 150 dpi is 18.75 image pixels: at 40 % it is 7.5 CSS px, still legible
# Image grids whose rows and columns are the figure's two axes (time steps or NFEs against samples), labelled only
# on the first column and top row: redrawn with fewer columns they would lose that reading, so they scroll sideways.
SCROLLS_ON_A_PHONE = {"fig-diffusion-digits", "fig-inverse-previews"}


def test_figure_labels_stay_legible_on_a_phone(html, phone):
    """A wide figure is not shrunk to a phone's width until its labels are 3 px tall: it is shown at 40 % of its
    size or more, and (nestedlib.style.show_figure's phone layout) fits the column instead of scrolling sideways."""
    tiny, scrolling = {}, {}
    for page in built_pages(html):
        if "/notebooks/" not in page.as_uri():
            continue
        open_page(phone, page)
        phone.execute_async_script(LOAD_SHOWN_FIGURES)
        shown = phone.execute_script(FIGURE_SCALES)
        name = str(page.relative_to(html))
        small = [(src, round(w), natural) for src, w, natural, _, _ in shown if w < MIN_FIGURE_SCALE * natural]
        wide = [(fid or src, round(w), box) for src, w, _, box, fid in shown
                if w > box + 1 and fid not in SCROLLS_ON_A_PHONE]
        if small:
            tiny[name] = small
        if wide:
            scrolling[name] = wide
    assert not tiny, f"figures shown below {MIN_FIGURE_SCALE:.0%} of their size on a phone: {tiny}"
    assert not scrolling, f"figures that scroll sideways on a phone (figure, shown px, column px): {scrolling}"


def test_every_page_fits_a_phone_and_logs_no_error(html, phone):
    """No page (eq1's long inline formulas and code included) is wider than a 390 px phone; no console errors."""
    too_wide, errors = {}, {}
    for page in built_pages(html):
        open_page(phone, page)
        name = str(page.relative_to(html))
        if page_width(phone) > PHONE:
            too_wide[name] = page_width(phone)
        logged = console_errors(phone)
        if logged:
            errors[name] = logged
    assert "book/eq1.html" in {str(p.relative_to(html)) for p in built_pages(html)}
    assert not too_wide, f"pages wider than the {PHONE} px window: {too_wide}"
    assert not errors, errors


@pytest.mark.parametrize("chapter", SLIDER_PAGES)
def test_slider_pages_read_well_on_a_phone(html, phone, chapter):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(phone, html / "notebooks" / f"{chapter}.html")
    WebDriverWait(phone, 30).until(lambda d: len(visible_frames(d)) >= 2 and all(n > 0 for _, n in frame_widths(d)))
    readout = phone.find_element(By.CSS_SELECTOR, ".widget-readout")
    phone.execute_script("arguments[0].scrollIntoView({block: 'center'})", readout)
    left, right = phone.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.left, r.right]", readout)
    assert readout.text.strip() and 0 <= left < right <= PHONE, f"the NFE readout spans {left}..{right} px"
    assert page_width(phone) <= PHONE
    assert not phone.execute_script(SCROLLING_IN_WIDGET_AREA)  # frames scale down and panels wrap instead
    assert all(shown <= natural for shown, natural in frame_widths(phone)), frame_widths(phone)
    assert not console_errors(phone)
