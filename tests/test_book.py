"""The book builds with warnings as errors, and its pages work offline in a real browser (headless Chromium)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="session")
def html(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run(
        [str(jb), "build", str(ROOT), "-W", "-n", "--keep-going", "--path-output", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
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


SLIDER_PAGES = ["quickstart", "algorithm2", "train_your_own"]


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
    assert not console_errors(browser)


def test_equations_render_offline(html, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get((html / "book" / "intro.html").as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.querySelectorAll('mjx-container').length") > 0)
    assert not console_errors(browser)
