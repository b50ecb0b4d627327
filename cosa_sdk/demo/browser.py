"""Open a report in headless Chromium: count the images that really rendered and take a screenshot.

The report marks ``<body data-images-loaded="OK/TOTAL">`` once the page has loaded (see
``report.IMAGE_CHECK_SCRIPT``); Chromium's ``--dump-dom`` gives that attribute back, so a missing
or corrupt embedded picture is caught without a browser-automation library.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cosa_sdk.errors import CosaConfigError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
INSTALL_HINT = "install Chromium (Debian/Ubuntu: `apt-get install chromium`) or set COSA_CHROMIUM=/path/to/chrome"
_LOADED = re.compile(r'data-images-loaded="(\d+)/(\d+)"')


@dataclass(frozen=True)
class ReportCheck:
    """What headless Chromium saw: images rendered out of images on the page, and the screenshot."""

    images_loaded: int
    images_total: int
    screenshot: Path | None

    @property
    def ok(self) -> bool:
        return self.images_total > 0 and self.images_loaded == self.images_total


def find_browser() -> str | None:
    """Path of a Chromium-family browser: $COSA_CHROMIUM first, then the usual names on PATH."""
    explicit = os.environ.get("COSA_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(browser: str, args: list[str], page: Path, timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix="cosa-chromium-") as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            *args,
            page.resolve().as_uri(),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise CosaConfigError(f"{browser} did not finish rendering {page} within {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-3:]
        raise CosaConfigError(f"{browser} failed on {page} (exit {done.returncode}): {' | '.join(tail)}")
    return done.stdout


def check_report(
    page: str | Path,
    *,
    screenshot: str | Path | None = None,
    browser: str | None = None,
    width: int = 1200,
    height: int = 3000,
    timeout: float = 120.0,
) -> ReportCheck:
    """Render `page` in headless Chromium; return how many of its images loaded, and save a PNG screenshot."""
    page = Path(page)
    if not page.is_file():
        raise CosaConfigError(f"no report at {page}: run `cosa demo` (or `make demo`) first")
    browser = browser or find_browser()
    if browser is None:
        raise CosaConfigError(f"no Chromium-family browser found: {INSTALL_HINT}")
    match = _LOADED.search(_run(browser, ["--dump-dom"], page, timeout))
    if match is None:
        raise CosaConfigError(
            f"{page} has no image check (data-images-loaded): it was not written by cosa's report writer"
        )
    shot = None
    if screenshot is not None:
        shot = Path(screenshot)
        shot.parent.mkdir(parents=True, exist_ok=True)
        _run(browser, [f"--screenshot={shot.resolve()}", f"--window-size={width},{height}"], page, timeout)
        if not shot.is_file():
            raise CosaConfigError(f"{browser} wrote no screenshot to {shot}")
    return ReportCheck(images_loaded=int(match.group(1)), images_total=int(match.group(2)), screenshot=shot)
