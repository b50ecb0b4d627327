"""The demo report's HTML on its own: the sample grid's legend says which colour is which class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from cosa_sdk.demo.browser import check_report, find_browser
from cosa_sdk.demo.report import write_report
from cosa_sdk.report_html import legend

CLASSES = ["background", "road", "<car>"]
PALETTE = [[0, 0, 0], [17, 201, 96], [201, 17, 133]]
SCORES = {
    "per_class_iou": {name: 50.0 for name in CLASSES},
    "per_class_iou_gt_filtered": {name: 60.0 for name in CLASSES},
}


def test_legend_has_a_swatch_name_and_share_per_class() -> None:
    text = legend(CLASSES, PALETTE, shares={"background": 0.75, "road": 0.25}, ignore="ignore")
    assert text.count("<li") == 4
    assert '<span class="swatch" style="background: rgb(17, 201, 96)"></span>road <span class="share">25.0 %' in text
    assert '<span class="swatch" style="background: rgb(0, 0, 0)"></span>background' in text
    assert '<li data-class="&lt;car&gt;" class="absent">' in text and "&lt;car&gt; <span" in text  # escaped, greyed
    assert "0.0 %" in text and "rgb(255, 255, 255)" in text
    plain = legend(CLASSES, PALETTE[:2])
    assert "share" not in plain and "ignore" not in plain
    assert plain.count("rgb(0, 0, 0)") == 2  # a class the palette does not cover is drawn black, as colorize does


def _report(path: Path, **extra: object) -> Path:
    grid = Image.fromarray(np.full((60, 200, 3), 128, dtype=np.uint8))  # grey: no class colour in the picture
    return write_report(
        path,
        title="legend test",
        summary_rows=[["dataset", "none"]],
        sample_grid=grid,
        sample_caption="input | prediction",
        metrics_path=path.parent / "no-metrics.jsonl",
        scores=SCORES,
        latency_rows=[],
        commands=[],
        **extra,  # type: ignore[arg-type]
    )


def test_report_puts_the_legend_under_the_sample_grid(tmp_path: Path) -> None:
    page = _report(tmp_path / "report.html", sample_legend=legend(CLASSES, PALETTE, shares={"road": 1.0}))
    text = page.read_text()
    grid_at, legend_at = text.index('alt="sample grid"'), text.index('class="legend"')
    assert grid_at < legend_at < text.index("Training curves")
    assert '<ul class="legend"' not in _report(tmp_path / "bare.html").read_text()  # the legend is optional


@pytest.mark.skipif(find_browser() is None, reason="no Chromium here (apt-get install chromium)")
def test_legend_swatches_render_in_headless_chromium(tmp_path: Path) -> None:
    page = _report(tmp_path / "report.html", sample_legend=legend(CLASSES, PALETTE, shares={"road": 1.0}))
    check = check_report(page, screenshot=tmp_path / "report.png", height=900)
    assert check.ok
    pixels = np.asarray(Image.open(check.screenshot).convert("RGB")).reshape(-1, 3)
    for rgb in PALETTE[1:]:  # colours found nowhere else on the page
        assert (pixels == rgb).all(axis=1).sum() >= 100, f"no {rgb} swatch in the screenshot"
