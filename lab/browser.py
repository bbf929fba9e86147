"""Headless Chromium driven through WebDriver (Debian's chromium,
chromium-driver and python3-selenium): how the tests read the status page
as an admin's browser shows it, and how the demo takes its screenshot."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class Browser:
    """One headless Chromium with a profile of its own, removed on close."""

    def __init__(self, width: int = 1400, height: int = 1000):
        self.profile = Path(tempfile.mkdtemp(prefix="boottorrent-chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in ("--headless=new", f"--window-size={width},{height}",
                         f"--user-data-dir={self.profile}",
                         # As root Chromium refuses its sandbox; the lab's
                         # browser opens only the lab's own page.
                         "--no-sandbox", "--disable-gpu", "--no-first-run",
                         "--disable-background-networking", "--disable-extensions"):
            options.add_argument(argument)
        try:
            self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        except Exception:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self, url: str) -> None:
        self.driver.get(url)

    def run(self, script: str, *args: object) -> object:
        """A script's value (its `return`), run in the page."""
        return self.driver.execute_script(script, *args)

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
