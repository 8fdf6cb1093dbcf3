"""A real headless Chromium (Debian's `chromium` package) driven by Python playwright, for the tests of what people look at.

Playwright cannot download its own browser here; it drives the system's Chromium through `executable_path`.
`.ci/run` installs both. The flags keep Chromium from reaching for the network at start.
"""
import shutil
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage']


@contextmanager
def chromium():
    "A headless Chromium browser."
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"Chromium is not installed at {CHROMIUM}: `apt-get install chromium` (.ci/run does it).")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try: yield browser
        finally: browser.close()


def screenshot(page: Path, png: Path, width: int = 1200) -> dict:
    "Open the HTML file `page`, save a full-page screenshot to `png`; returns what the browser saw (visible SVG charts, text)."
    with chromium() as browser:
        tab = browser.new_page(viewport={'width': width, 'height': 900})
        tab.goto(Path(page).resolve().as_uri())
        tab.wait_for_load_state('load')
        svgs = tab.evaluate("Array.from(document.querySelectorAll('svg')).filter(s => s.getBoundingClientRect().width > 50).length")
        text = tab.inner_text('body')
        size = tab.evaluate('[document.documentElement.scrollWidth, document.documentElement.scrollHeight]')
        tab.screenshot(path=str(png), full_page=True)
    return {'svgs': svgs, 'text': text, 'width': size[0], 'height': size[1], 'png': png}
