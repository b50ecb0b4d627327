"""`GET /`: the upload page, served by `cosa serve` and driven in headless Chromium like a person would.

A real photo goes through the page's own file picker (DevTools `DOM.setFileInputFiles`) and its
drop zone (`Input.dispatchDragEvent`); the overlay, the legend and the downloadable mask must
match the SDK's for the same bytes. Skipped where Chromium is missing (`apt-get install chromium`,
or point COSA_CHROMIUM at a Chrome binary).
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient
from toy_bundle import cached_toy_bundle

import cosa_sdk
from cosa_sdk.demo.browser import find_browser
from cosa_sdk.serving.launcher import LocalServer, start_server
from cosa_sdk.serving.page import PAGE_FILE, page_app
from cosa_sdk.serving.render import JPEG_QUALITY

from .helpers import encode, post_image

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("background", "red", "green", "blue")
PAGE_ENV = {"COSA_MAX_UPLOAD_MB": "1"}
needs_chromium = pytest.mark.skipif(find_browser() is None, reason="no Chromium here (apt-get install chromium)")


# -- the page itself, no server -------------------------------------------------------------------
def test_page_is_self_contained_package_data() -> None:
    reply = TestClient(page_app).get("/")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in reply.headers["content-security-policy"]
    page = reply.text
    assert page == (REPO / "serving" / PAGE_FILE).read_text(encoding="utf-8")
    linked = re.findall(r"""(?:src|href|action)\s*=\s*["']([^"']+)""", page) + re.findall(r"url\(([^)]+)\)", page)
    assert not [u for u in linked if re.match(r"\w+://|//", u.strip("'\""))], (
        "the page must load nothing from elsewhere"
    )
    assert "<script src" not in page and '<link rel="stylesheet"' not in page
    for endpoint in ('"segment_json?mask=png"', '"overlay"', '"info"', 'append("image"'):
        assert endpoint in page, endpoint
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "*.html" in config["tool"]["setuptools"]["package-data"]["cosa_sdk.serving"], "page.html must be installed"
    assert TestClient(page_app).get("/segment").status_code == 404  # the mount claims `/` only


def test_service_mounts_the_page_at_the_root() -> None:
    from cosa_sdk.serving.service import CosaSegmentation

    assert any(app is page_app and path == "/" for app, path, _ in CosaSegmentation.mount_apps)


# -- a real server and a real browser ---------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    log = tmp_path_factory.mktemp("serve") / "server.log"
    handle = start_server(cached_toy_bundle(classes=CLASSES), env=PAGE_ENV, log_path=log)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def segmenter() -> Iterator[cosa_sdk.Segmenter]:
    with cosa_sdk.load(cached_toy_bundle(classes=CLASSES)) as seg:
        yield seg


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real photos (scikit-image's sample data) as a person would have them on disk."""
    data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("photos")
    files = {
        "astronaut.jpg": (data.astronaut(), "JPEG", {"quality": 90}),
        "coffee.png": (data.coffee(), "PNG", {}),
        "chelsea.tif": (data.chelsea(), "TIFF", {}),  # Chromium cannot decode TIFF: the server draws the overlay
    }
    for name, (pixels, fmt, options) in files.items():
        (folder / name).write_bytes(encode(pixels, fmt, **options))
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "huge.jpg").write_bytes(np.random.default_rng(0).bytes(1_200_000))  # over COSA_MAX_UPLOAD_MB=1
    return {path.name: path for path in folder.iterdir()}


def drive(scenario: Callable[[Any], Awaitable[None]]) -> Any:
    """Run `scenario(page)` in a fresh headless tab; return the page (requests and problems seen)."""
    pytest.importorskip("aiohttp")
    from devtools import DevToolsPage

    async def main() -> Any:
        async with DevToolsPage(find_browser() or "chromium", width=1280, height=900, timeout=60) as page:
            await scenario(page)
            return page

    return asyncio.run(main())


async def open_page(page: Any, server: LocalServer) -> None:
    await page.goto(f"{server.url}/")
    assert await page.wait_for("document.body.dataset.info") == "ready"


async def upload(page: Any, action: Callable[[], Awaitable[None]], name: str) -> str:
    """Pick or drop a file, wait until the page has answered for it; "done" or "error"."""
    await page.evaluate("document.body.dataset.state = 'waiting'")
    await action()
    state = await page.wait_for(
        "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state", 60
    )
    text = await page.evaluate(
        "document.getElementById('status').textContent + document.getElementById('error-title').textContent"
    )
    assert name in text, f"the page answered for another file: {text!r}"
    return state


async def canvas_pixels(page: Any) -> np.ndarray:
    url = await page.evaluate("document.getElementById('view').toDataURL('image/png')")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as picture:
        return np.asarray(picture.convert("RGB")).astype(np.int16)


def close_to(served: np.ndarray, expected: Image.Image | np.ndarray, tolerance: float) -> bool:
    """Decoders differ by a level or two (Chromium's JPEG and canvas vs Pillow's)."""
    expected = np.asarray(expected).astype(np.int16)
    return served.shape == expected.shape and float(np.abs(served - expected).mean()) < tolerance


def as_served_jpeg(picture: Image.Image) -> Image.Image:
    """What POST /overlay sends for this overlay (JPEG at the service's quality), decoded by Pillow."""
    return Image.open(io.BytesIO(encode(picture, "JPEG", quality=JPEG_QUALITY)))


def legend_rows(page: Any) -> Awaitable[list[dict[str, Any]]]:
    return page.evaluate(
        """[...document.querySelectorAll('#legend li')].map((li) => ({
            name: li.querySelector('.name').textContent, share: Number(li.dataset.share),
            text: li.querySelector('.share').textContent,
            colour: getComputedStyle(li.querySelector('.swatch')).backgroundColor }))"""
    )


@needs_chromium
def test_a_photo_picked_in_the_page_gets_overlay_legend_and_mask(
    server: LocalServer, segmenter: cosa_sdk.Segmenter, photos: dict[str, Path], tmp_path: Path
) -> None:
    photo = photos["astronaut.jpg"]
    expected = segmenter.segment(photo.read_bytes())
    assert len(expected.present) >= 2, "the photo must show more than one class"
    screenshot = tmp_path / "upload_page.png"

    async def scenario(page: Any) -> None:
        await open_page(page, server)
        assert "toy" in await page.evaluate("document.getElementById('model').textContent")
        assert await upload(page, lambda: page.choose_files("#file", photo), photo.name) == "done"
        assert await page.evaluate("document.body.dataset.overlay") == "client"
        # the legend: every class found, largest first, with its colour and share of the image
        rows = await legend_rows(page)
        assert [row["name"] for row in rows] == list(expected.present)
        for row in rows:
            fraction = expected.present[row["name"]]
            assert row["share"] == pytest.approx(fraction, abs=1e-6)
            assert row["text"] == f"{100 * fraction:.1f} %"
            rgb = expected.palette[expected.classes.index(row["name"])]
            assert row["colour"] == "rgb({}, {}, {})".format(*rgb)
        absent = await page.evaluate("document.getElementById('absent').textContent")
        assert all(name in absent for name in CLASSES if name not in expected.present)
        # the download link holds the mask PNG: pixel value = class index, the SDK's mask
        saved = await page.download("#download-mask", tmp_path / "downloads")
        assert saved.name == "astronaut_mask.png"
        with Image.open(saved) as mask:
            assert mask.mode == "P"
            np.testing.assert_array_equal(np.asarray(mask), expected.mask)
        # the overlay at the slider's 50 %, as the SDK draws it
        assert await page.evaluate("document.getElementById('alpha').value") == "50"
        assert close_to(await canvas_pixels(page), expected.overlay(0.5), 1.0)
        await page.screenshot(screenshot)
        # the slider redraws at once: End key -> 100 %, the class colours alone where a class was found
        await page.evaluate("document.getElementById('alpha').focus()")
        for kind in ("keyDown", "keyUp"):
            await page.send("Input.dispatchKeyEvent", type=kind, key="End", code="End", windowsVirtualKeyCode=35)
        assert await page.wait_for("document.getElementById('view').dataset.alpha === '1'")
        assert await page.evaluate("document.getElementById('alpha-value').textContent") == "100 %"
        assert close_to(await canvas_pixels(page), expected.overlay(1.0), 1.0)
        saved = await page.download("#download-overlay", tmp_path / "downloads")
        assert saved.name == "astronaut_overlay.png"
        assert close_to(np.asarray(Image.open(saved).convert("RGB")).astype(np.int16), expected.overlay(1.0), 1.0)
        # what is under the pointer
        box = await page.evaluate(
            "(() => { const r = document.getElementById('view').getBoundingClientRect();"
            " return [r.left, r.top, r.width, r.height]; })()"
        )
        x, y = int(0.5 * expected.size[0]), int(0.8 * expected.size[1])
        await page.send(
            "Input.dispatchMouseEvent", type="mouseMoved",
            x=box[0] + (x + 0.5) * box[2] / expected.size[0], y=box[1] + (y + 0.5) * box[3] / expected.size[1],
        )  # fmt: skip
        pointer = await page.wait_for("document.getElementById('pointer').textContent")
        assert pointer.endswith(expected.classes[int(expected.mask[y, x])]), pointer

    page = drive(scenario)
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(server.url))
    assert [url for url in page.requests if not url.startswith((origin, "blob:", "data:"))] == []
    assert page.problems == []
    with Image.open(screenshot) as shot:
        assert shot.size[0] == 1280 and shot.size[1] >= 600
        colours = shot.convert("RGB").getcolors(1 << 20)
        assert colours is not None and len(colours) > 2000, "the screenshot shows no photo"


@needs_chromium
def test_dropped_images_and_the_server_drawn_overlay(
    server: LocalServer, segmenter: cosa_sdk.Segmenter, photos: dict[str, Path]
) -> None:
    coffee, cat = photos["coffee.png"], photos["chelsea.tif"]

    async def scenario(page: Any) -> None:
        await open_page(page, server)
        assert await upload(page, lambda: page.drop_files("#drop", coffee), coffee.name) == "done"
        expected = segmenter.segment(coffee.read_bytes())
        assert [row["name"] for row in await legend_rows(page)] == list(expected.present)
        assert close_to(await canvas_pixels(page), expected.overlay(0.5), 1.0)  # PNG: no decoder differences
        # a TIFF: Chromium cannot decode it, so the overlay comes from POST /overlay at the slider's alpha
        assert await upload(page, lambda: page.drop_files("#drop", cat), cat.name) == "done"
        assert await page.evaluate("document.body.dataset.overlay") == "server"
        expected = segmenter.segment(cat.read_bytes())
        assert [row["name"] for row in await legend_rows(page)] == list(expected.present)
        assert close_to(await canvas_pixels(page), as_served_jpeg(expected.overlay(0.5)), 1.5)
        calls = sum(url.endswith("/overlay") for url in page.requests)
        await page.evaluate(
            "(() => { const s = document.getElementById('alpha'); s.value = '100';"
            " s.dispatchEvent(new Event('input', { bubbles: true })); })()"
        )
        assert await page.wait_for("document.getElementById('view').dataset.alpha === '1'")
        assert sum(url.endswith("/overlay") for url in page.requests) == calls + 1
        assert close_to(await canvas_pixels(page), as_served_jpeg(expected.overlay(1.0)), 1.5)

    page = drive(scenario)
    assert page.problems == []


@needs_chromium
def test_refusals_are_shown_and_the_next_upload_works(server: LocalServer, photos: dict[str, Path]) -> None:
    async def scenario(page: Any) -> None:
        await open_page(page, server)
        assert await upload(page, lambda: page.choose_files("#file", photos["notes.txt"]), "notes.txt") == "error"
        shown = await page.evaluate(
            "[document.getElementById('error').dataset.status, document.getElementById('error').textContent,"
            " document.getElementById('result').hidden, document.getElementById('retry').hidden]"
        )
        assert shown[0] == "415" and "not an image" in shown[1] and "JPEG, PNG" in shown[1], shown
        assert shown[2] and shown[3], "no stale result and no retry button for a file that must change"
        sent = len(page.requests)
        assert await upload(page, lambda: page.choose_files("#file", photos["huge.jpg"]), "huge.jpg") == "error"
        shown = await page.evaluate("document.getElementById('error').textContent")
        assert "too large" in shown and "up to 1 MB" in shown, shown
        assert len(page.requests) == sent, "an upload over the limit must not be sent"
        photo = photos["astronaut.jpg"]
        assert await upload(page, lambda: page.choose_files("#file", photo), photo.name) == "done"
        assert await page.evaluate(
            "document.getElementById('error').hidden && !document.getElementById('result').hidden"
        )

    page = drive(scenario)
    # the browser logs the refused request itself; nothing else may go wrong
    assert [p for p in page.problems if "status of 415" not in p] == []


def test_the_server_answers_get_root_with_the_page_and_keeps_the_api(server: LocalServer) -> None:
    with urllib.request.urlopen(f"{server.url}/", timeout=10) as reply:
        assert reply.status == 200 and reply.read().decode() == (REPO / "serving" / PAGE_FILE).read_text()
    with urllib.request.urlopen(f"{server.url}/docs.json", timeout=10) as reply:
        assert reply.status == 200  # the OpenAPI spec is still there
    assert post_image(server.url, "/segment", encode(np.zeros((8, 8, 3), np.uint8), "PNG")).status == 200
